using NativeLora.Model;
using NativeLora.SafeTensors;
using NativeLora.Tests.Support;
using NativeLora.Training;

namespace NativeLora.Tests.Training;

/// <summary>Trainer.Run, the library's one training call (what `nativelora train` and samples/ use), on a model directory and a JSONL file.</summary>
public class TrainerRunTests : TempDirTests
{
    /// <summary>Keeps every progress report, in order.</summary>
    internal sealed class Recorder : IProgress<TrainingProgress>
    {
        public readonly List<TrainingProgress> Reports = new();
        public void Report(TrainingProgress value) => Reports.Add(value);
    }

    [Test]
    public void OneCallTrainsFromFilesReportsInOrderAndLeavesTheRun()
    {
        var tokDir = NativeLora.Tests.Text.TokenizerReference.Dir("llama3");
        var modelDir = Path.Combine(Dir, "model");
        RandomInit.SaveModelDirectory(modelDir, new ModelConfig
        {
            ModelType = "llama", HiddenSize = 32, IntermediateSize = 48, NumLayers = 1, NumHeads = 4, NumKvHeads = 2,
            HeadDim = 8, RmsNormEps = 1e-5, RopeTheta = 10000, MaxPositionEmbeddings = 128,
        }, tokDir, seed: 4, global::NativeLora.Tensors.DType.F32);
        var data = Path.Combine(Dir, "data.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 10).Select(i => $$"""{"instruction": "Count to {{i}}.", "output": "{{string.Join(" ", Enumerable.Range(1, i + 1))}}"}""").Append("not json"));
        var config = new TrainingConfig
        {
            Model = modelDir, Data = data, OutputDir = Path.Combine(Dir, "run"), MaxSteps = 4, MicroBatchSize = 2, GradientAccumulation = 1,
            MaxSeqLen = 48, EvalSteps = 2, SaveSteps = 2, LearningRate = 1e-3, ValSplit = 0.2, MaxBadRowFraction = 0.2, LoraR = 4, Dtype = "f32",
        };
        var progress = new Recorder();
        var result = Trainer.Run(config, TestDevice.Shared, progress);

        var lines = progress.Reports.Select(r => r.Message).ToList();
        Assert.That(lines[0], Does.StartWith("device: "));
        Assert.That(lines, Has.Some.StartsWith("trainable parameters: ").And.Some.StartsWith("memory estimate").And.Some.StartsWith($"data {data}: 11 rows"));
        Assert.That(progress.Reports.Where(r => r.Kind == TrainingProgressKind.Warning).Select(r => r.Message), Has.Some.Contains(":11:"), "the bad row is reported as a warning");
        var steps = progress.Reports.Where(r => r.Kind == TrainingProgressKind.Step).Select(r => r.Step!).ToList();
        Assert.That(steps.Select(s => s.Step), Is.EqualTo(new[] { 1, 2, 3, 4 }), "one report per step, in order");
        Assert.That(steps.All(s => s.TotalSteps == 4 && double.IsFinite(s.Loss)), Is.True);
        Assert.That(progress.Reports.FindIndex(r => r.Message.StartsWith("validation loss before")), Is.LessThan(progress.Reports.FindIndex(r => r.Kind == TrainingProgressKind.Step)));

        Assert.That(result.State.GlobalStep, Is.EqualTo(4));
        Assert.That(result.History.Select(h => h.Step), Is.EqualTo(new[] { 1, 2, 3, 4 }), "the history is metrics.jsonl as written");
        Assert.That(result.History[^1].ValLoss, Is.EqualTo(result.ValLossAfter).Within(1e-9), "the last step's validation is the loss after training");
        Assert.That(double.IsFinite(result.ValLossBefore) && result.ValLossBefore != result.ValLossAfter, Is.True, $"{result.ValLossBefore} -> {result.ValLossAfter}");
        foreach (var f in new[] { result.MetricsPath, result.PlotPath, Path.Combine(result.AdapterDir, "adapter_config.json"), Path.Combine(config.OutputDir, "train_config.json") })
            Assert.That(File.Exists(f), Is.True, f);
        // the final adapter is the last checkpoint's weights
        using var final = SafeTensorsFile.Open(Path.Combine(result.AdapterDir, "adapter_model.safetensors"));
        using var last = SafeTensorsFile.Open(Path.Combine(config.OutputDir, "checkpoint-4", "adapter_model.safetensors"));
        Assert.That(final.Tensors.Select(t => t.Name), Is.EquivalentTo(last.Tensors.Select(t => t.Name)));
        foreach (var t in final.Tensors)
            Assert.That(final.GetBytes(t.Name).SequenceEqual(last.GetBytes(t.Name)), Is.True, t.Name);
    }

    [Test]
    public void AnInvalidConfigFailsBeforeAnythingIsWritten()
    {
        var dir = Path.Combine(Path.GetTempPath(), "nl-run-invalid-" + Guid.NewGuid().ToString("N"));
        var e = Assert.Throws<ArgumentException>(() => Trainer.Run(new TrainingConfig { Model = "m", OutputDir = dir, LoraR = 0 }, TestDevice.Shared))!;
        Assert.That(e.Message, Does.Contain("r must be ≥ 1"));
        Assert.That(Directory.Exists(dir), Is.False);
    }
}
