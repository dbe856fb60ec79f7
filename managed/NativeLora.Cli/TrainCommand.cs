using NativeLora.Devices;
using NativeLora.Training;
using Spectre.Console;

namespace NativeLora.Cli;

/// <summary>`nativelora train`: resolves the config from file and flags, then hands it to <see cref="Trainer.Run(TrainingConfig, IProgress{TrainingProgress}?, RunStartMode)"/> with a progress bar.</summary>
internal static class TrainCommand
{
    public static int Run(TrainOptions o)
    {
        var c = TrainingConfig.Load(o.ConfigFile, o.Overrides());
        if (o.DryRun)
        {
            TrainingPlan plan;
            using (var device = ComputeDevice.Open(ComputeDevice.ParseKind(c.Device))) plan = Trainer.Plan(c, device);
            Console.WriteLine(plan);
            Console.WriteLine(c.ToJson());
            return 0;
        }

        TrainingResult result = null!;
        AnsiConsole.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn(), new SpinnerColumn())
            .Start(ctx => result = Trainer.Run(c, new ConsoleProgress(ctx), o.StartMode));

        if (Diagnostics.OpProfiler.Enabled) Console.Error.WriteLine("op profile (NATIVELORA_PROFILE=1; nested ops count in both):\n" + Diagnostics.OpProfiler.Report());
        var s = result.State;
        Console.WriteLine(double.IsNaN(result.ValLossAfter)
            ? $"{s.GlobalStep} steps; no validation loss"
            : $"validation loss: {result.ValLossBefore:F4} before, {result.ValLossAfter:F4} after ({s.GlobalStep} steps; best {(s.BestStep < 0 ? "-" : $"{s.BestValLoss:F4} at step {s.BestStep}")})");
        Console.WriteLine($"adapter: {result.AdapterDir}   best: {result.BestAdapterDir ?? "-"}   metrics: {result.MetricsPath}   plot: {result.PlotPath}");
        return 0;
    }

    // Reports arrive on the training thread, in order: lines above the bar, steps move the bar.
    private sealed class ConsoleProgress(ProgressContext ctx) : IProgress<TrainingProgress>
    {
        private ProgressTask? _bar;

        public void Report(TrainingProgress p)
        {
            switch (p.Kind)
            {
                case TrainingProgressKind.Step:
                    var m = p.Step!;
                    _bar ??= ctx.AddTask("training", maxValue: m.TotalSteps);
                    _bar.Value = m.Step;
                    _bar.Description = $"step {m.Step}/{m.TotalSteps} loss {m.Loss:F4}{(m.ValLoss is double v ? $" val {v:F4}" : "")} lr {m.Lr:E2} {m.TokensPerSecond:F0} tok/s";
                    break;
                case TrainingProgressKind.Warning:
                    Console.Error.WriteLine(p.Message);
                    break;
                default:
                    AnsiConsole.WriteLine(p.Message);
                    break;
            }
        }
    }
}
