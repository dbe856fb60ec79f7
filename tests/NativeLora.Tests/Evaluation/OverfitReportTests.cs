using NativeLora.Evaluation;
using NativeLora.Training;

namespace NativeLora.Tests.Evaluation;

/// <summary>OverfitReport on synthetic curves whose turning points are known by construction.</summary>
public class OverfitReportTests
{
    /// <summary>Training loss every step; validation every <paramref name="evalEvery"/> steps from <paramref name="val"/>(step).</summary>
    private static List<MetricPoint> Curve(int steps, int evalEvery, Func<int, double> train, Func<int, double> val)
    {
        var points = new List<MetricPoint>();
        for (int s = 1; s <= steps; s++)
            points.Add(new MetricPoint(s, train(s), s % evalEvery == 0 ? val(s) : null));
        return points;
    }

    private static double FallingTrain(int s) => 0.1 + 2.0 * Math.Exp(-s / 300.0);

    [Test]
    public void UShapedValidationLossOverfitsAfterItsMinimum()
    {
        // validation is a parabola with its minimum at step 500; evaluations every 50 steps
        var r = OverfitReport.Analyze(Curve(1000, 50, FallingTrain, s => 1.0 + Math.Pow((s - 500) / 500.0, 2)), patience: 3);
        Assert.That(r.BestStep, Is.EqualTo(500));
        Assert.That(r.BestValLoss, Is.EqualTo(1.0));
        Assert.That(r.OnsetStep, Is.EqualTo(550), "the first evaluation after the minimum");
        Assert.That(r.ConfirmedStep, Is.EqualTo(650), "the third consecutive rise");
        Assert.That(r.Summary, Is.EqualTo("overfitting from step 550: validation loss rose for 3 evaluations in a row while the training loss kept falling (seen at step 650); the best checkpoint is step 500 (validation loss 1)"));
    }

    [Test]
    public void StillImprovingRunDoesNotOverfit()
    {
        var r = OverfitReport.Analyze(Curve(1000, 100, FallingTrain, s => 3.0 - s / 1000.0));
        Assert.That(r.BestStep, Is.EqualTo(1000));
        Assert.That(r.OnsetStep, Is.Null);
        Assert.That(r.ConfirmedStep, Is.Null);
        Assert.That(r.Summary, Is.EqualTo("no overfitting seen (patience 3); the lowest validation loss was 2 at step 1000"));
    }

    [Test]
    public void ABlipAfterTheMinimumIsNotTheOnset()
    {
        // evaluations at steps 100..1000: minimum at 300, one rise at 400, a dip at 500 (still above the minimum),
        // then a sustained rise from 600
        double[] val = { 2.0, 1.5, 1.0, 1.2, 1.1, 1.3, 1.4, 1.6, 1.9, 2.3 };
        var r = OverfitReport.Analyze(Curve(1000, 100, FallingTrain, s => val[s / 100 - 1]), patience: 3);
        Assert.That(r.BestStep, Is.EqualTo(300));
        Assert.That(r.OnsetStep, Is.EqualTo(600));
        Assert.That(r.ConfirmedStep, Is.EqualTo(800));
        // with patience 1 the blip itself counts
        Assert.That(OverfitReport.Analyze(Curve(1000, 100, FallingTrain, s => val[s / 100 - 1]), patience: 1).OnsetStep, Is.EqualTo(400));
    }

    [Test]
    public void RisingTrainingLossIsDivergenceNotOverfitting()
    {
        // both curves turn up at step 500 (e.g. a too-high learning rate): not overfitting
        var r = OverfitReport.Analyze(Curve(1000, 50, s => 1.0 + Math.Abs(s - 500) / 500.0, s => 1.0 + Math.Abs(s - 500) / 400.0));
        Assert.That(r.BestStep, Is.EqualTo(500));
        Assert.That(r.OnsetStep, Is.Null);
    }

    [Test]
    public void ARiseShorterThanPatienceAtTheEndIsNotReported()
    {
        double[] val = { 3, 2, 1, 1.1, 1.2 };
        var points = Curve(500, 100, FallingTrain, s => val[s / 100 - 1]);
        Assert.That(OverfitReport.Analyze(points, patience: 3).OnsetStep, Is.Null);
        var r2 = OverfitReport.Analyze(points, patience: 2);
        Assert.That((r2.OnsetStep, r2.ConfirmedStep), Is.EqualTo(((int?)400, (int?)500)));
    }

    [Test]
    public void TiesForTheMinimumPickTheEarliestEvaluation()
    {
        double[] val = { 2, 1, 1, 1.5, 2, 2.5 };
        var r = OverfitReport.Analyze(Curve(600, 100, FallingTrain, s => val[s / 100 - 1]), patience: 3);
        Assert.That(r.BestStep, Is.EqualTo(200));
        // step 300 ties the minimum, which is not a rise; the run starts at 400
        Assert.That(r.OnsetStep, Is.EqualTo(400));
        Assert.That(r.ConfirmedStep, Is.EqualTo(600));
    }

    [Test]
    public void TheMovingAverageSmoothsNoisyTrainingLoss()
    {
        // the training loss falls overall but spikes on every evaluation step after 500, so evaluation-step
        // losses alone rise; averaged over the last 10 steps it still falls
        double Train(int s) => s > 500 && s % 50 == 0 ? FallingTrain(s) + 0.05 * (s - 500) / 50.0 : FallingTrain(s);
        var points = Curve(1000, 50, Train, s => 1.0 + Math.Pow((s - 500) / 500.0, 2));
        Assert.That(OverfitReport.Analyze(points, patience: 3, window: 1).OnsetStep, Is.Null, "window 1 sees only the spikes");
        Assert.That(OverfitReport.Analyze(points, patience: 3, window: 10).OnsetStep, Is.EqualTo(550));
    }

    [Test]
    public void TrainerHistoryAndInvalidInput()
    {
        StepMetrics Step(int step, double loss, double? val, bool skipped = false) =>
            new(step, 0, loss, val, 1e-4, 1, 100, 0, 10, skipped, step, 6);
        var history = new[]
        {
            Step(1, 3.0, 2.0), Step(2, 2.5, 1.5), Step(3, double.NaN, null, skipped: true),
            Step(4, 2.0, 1.6), Step(5, 1.5, 1.8), Step(6, 1.0, 2.2),
        };
        var r = OverfitReport.Analyze(history, patience: 3, window: 1);
        Assert.That((r.BestStep, r.OnsetStep, r.ConfirmedStep), Is.EqualTo(((int?)2, (int?)4, (int?)6)));

        Assert.That(OverfitReport.Analyze(new[] { new MetricPoint(1, 1.0) }).Summary, Is.EqualTo("no validation loss was recorded"));
        Assert.Throws<ArgumentException>(() => OverfitReport.Analyze(new[] { new MetricPoint(2, 1.0), new MetricPoint(2, 0.9) }));
        Assert.Throws<ArgumentException>(() => OverfitReport.Analyze(new[] { new MetricPoint(1, double.NaN) }));
        Assert.Throws<ArgumentException>(() => OverfitReport.Analyze(new[] { new MetricPoint(1, 1.0, double.PositiveInfinity) }));
        Assert.Throws<ArgumentException>(() => OverfitReport.Analyze(new[] { new MetricPoint(1, 1.0) }, patience: 0));
        Assert.Throws<ArgumentException>(() => OverfitReport.Analyze(new[] { new MetricPoint(1, 1.0) }, window: 0));
    }
}
