using System.Globalization;
using NativeLora.Training;

namespace NativeLora.Evaluation;

/// <summary>One logged training step: its training loss and, at evaluation steps, the validation loss.</summary>
public readonly record struct MetricPoint(int Step, double TrainLoss, double? ValLoss = null);

/// <summary>
/// When a run started to overfit, and which checkpoint to keep. Definitions, over the evaluations
/// E₀…Eₙ₋₁ (the points that have a validation loss, in step order):
/// <list type="bullet">
/// <item><b>best</b>: the evaluation with the lowest validation loss (the earliest on ties) — the checkpoint to keep;</item>
/// <item><b>training-loss moving average</b> at an evaluation: the mean training loss of the last
/// <c>window</c> logged steps up to and including its step (fewer at the start);</item>
/// <item>an evaluation Eⱼ (j ≥ 1) <b>rises</b> when its validation loss is above Eⱼ₋₁'s while the
/// moving average is below Eⱼ₋₁'s — validation getting worse while training still improves;</item>
/// <item><b>onset</b>: the first evaluation after the best one that starts <c>patience</c> consecutive
/// rises; <b>confirmed</b>: the last of those rises, the first point at which the overfitting is visible.</item>
/// </list>
/// Rises whose training loss did not fall (both curves going up: divergence, not overfitting) do
/// not count, and neither does a run of rises shorter than <c>patience</c>.
/// </summary>
public sealed record OverfitReport(int? BestStep, double? BestValLoss, int? OnsetStep, int? ConfirmedStep, int Patience, int Window)
{
    public string Summary => BestStep == null
        ? "no validation loss was recorded"
        : OnsetStep == null
            ? string.Create(CultureInfo.InvariantCulture, $"no overfitting seen (patience {Patience}); the lowest validation loss was {BestValLoss:G6} at step {BestStep}")
            : string.Create(CultureInfo.InvariantCulture,
                $"overfitting from step {OnsetStep}: validation loss rose for {Patience} evaluations in a row while the training loss kept falling (seen at step {ConfirmedStep}); the best checkpoint is step {BestStep} (validation loss {BestValLoss:G6})");

    public override string ToString() => Summary;

    public static OverfitReport Analyze(IReadOnlyList<MetricPoint> points, int patience = 3, int window = 10)
    {
        if (patience < 1) throw new ArgumentException($"patience must be at least 1, got {patience}");
        if (window < 1) throw new ArgumentException($"window must be at least 1, got {window}");
        for (int i = 0; i < points.Count; i++)
        {
            if (i > 0 && points[i].Step <= points[i - 1].Step)
                throw new ArgumentException($"steps must increase: step {points[i].Step} follows step {points[i - 1].Step}");
            if (!double.IsFinite(points[i].TrainLoss) || points[i].ValLoss is { } v && !double.IsFinite(v))
                throw new ArgumentException($"step {points[i].Step} has a non-finite loss");
        }

        // evaluations with the training-loss moving average at each
        var evals = new List<(int Step, double Val, double TrainAvg)>();
        for (int i = 0; i < points.Count; i++)
        {
            if (points[i].ValLoss is not { } val) continue;
            int from = Math.Max(0, i - window + 1);
            double sum = 0;
            for (int k = from; k <= i; k++) sum += points[k].TrainLoss;
            evals.Add((points[i].Step, val, sum / (i - from + 1)));
        }
        if (evals.Count == 0) return new OverfitReport(null, null, null, null, patience, window);

        int best = 0;
        for (int j = 1; j < evals.Count; j++)
            if (evals[j].Val < evals[best].Val) best = j;

        bool Rises(int j) => evals[j].Val > evals[j - 1].Val && evals[j].TrainAvg < evals[j - 1].TrainAvg;
        for (int k = best + 1; k + patience - 1 < evals.Count; k++)
        {
            int run = 0;
            while (run < patience && Rises(k + run)) run++;
            if (run == patience)
                return new OverfitReport(evals[best].Step, evals[best].Val, evals[k].Step, evals[k + patience - 1].Step, patience, window);
        }
        return new OverfitReport(evals[best].Step, evals[best].Val, null, null, patience, window);
    }

    /// <summary>From a trainer's history (or metrics.jsonl rows): skipped and non-finite steps are left out.</summary>
    public static OverfitReport Analyze(IEnumerable<StepMetrics> steps, int patience = 3, int window = 10) =>
        Analyze(steps.Where(s => !s.Skipped && double.IsFinite(s.Loss))
            .Select(s => new MetricPoint(s.Step, s.Loss, s.ValLoss is { } v && double.IsFinite(v) ? v : null)).ToList(), patience, window);
}
