namespace NativeLora.Training;

/// <summary>The training and validation loss curves of a run as a PNG (ScottPlot).</summary>
public static class LossPlot
{
    public static void Write(string path, IReadOnlyList<StepMetrics> history, string title = "NativeLora training")
    {
        var plot = new ScottPlot.Plot();
        var train = history.Where(h => double.IsFinite(h.Loss)).ToList();
        if (train.Count > 0)
        {
            var s = plot.Add.Scatter(train.Select(h => (double)h.Step).ToArray(), train.Select(h => h.Loss).ToArray());
            s.LegendText = "train loss";
            s.MarkerSize = 0;
        }
        var val = history.Where(h => h.ValLoss is double v && double.IsFinite(v)).ToList();
        if (val.Count > 0)
        {
            var v = plot.Add.Scatter(val.Select(h => (double)h.Step).ToArray(), val.Select(h => h.ValLoss!.Value).ToArray());
            v.LegendText = "validation loss";
            v.MarkerSize = 6;
        }
        plot.Title(title);
        plot.XLabel("optimizer step");
        plot.YLabel("loss");
        plot.ShowLegend();
        plot.SavePng(path, 800, 500);
    }
}
