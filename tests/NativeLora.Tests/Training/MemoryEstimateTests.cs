using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Tensors;
using NativeLora.Tests.Model;
using NativeLora.Tests.Support;
using NativeLora.Training;

namespace NativeLora.Tests.Training;

/// <summary>The planner's prediction against the allocator's measured peak of live tensor memory on real training steps.</summary>
public class MemoryEstimateTests
{
    [TestCase(2, 64, true)]
    [TestCase(2, 64, false)]
    [TestCase(4, 128, true)]
    [TestCase(1, 256, false)]
    public void PredictionIsWithin15PercentOfTheMeasuredPeak(int microBatch, int seqLen, bool checkpointing)
    {
        var c = GenerationTests.TinyConfig("llama") with { NumLayers = 3, VocabSize = 2000, MaxPositionEmbeddings = 512 };
        var dev = TestDevice.Shared;
        dev.TrimPool();
        long baseline = dev.LiveBytes;
        dev.ResetPeak();
        var lora = new LoraConfig { R = 8, Dropout = 0.05 };
        var dir = Directory.CreateTempSubdirectory("nl-mem-").FullName;
        try
        {
            using var model = GenerationTests.TinyModel(c, 1);
            using var adapter = LoraAdapter.Attach(model, lora, 1);
            model.GradientCheckpointing = checkpointing;
            var rng = new Random(1);
            var ex = Enumerable.Range(0, microBatch).Select(_ => new NativeLora.Data.TrainingExample(
                Enumerable.Range(0, seqLen).Select(_ => rng.Next(c.VocabSize)).ToArray(), Enumerable.Repeat(true, seqLen).ToArray())).ToList();
            var cfg = new TrainingConfig { Model = "m", OutputDir = dir, MicroBatchSize = microBatch, GradientAccumulation = 1, MaxSeqLen = seqLen, MaxSteps = 2,
                GradientCheckpointing = checkpointing, EvalSteps = 100, SaveSteps = 100, LoraR = 8, ValSplit = 0 };
            new Trainer(cfg, model, adapter, ex, Array.Empty<NativeLora.Data.TrainingExample>()).Run(resume: false);
            long measured = dev.PeakLiveBytes - baseline;
            var predicted = MemoryEstimate.For(c, lora, DType.F32, microBatch, seqLen, checkpointing);
            TestContext.Progress.WriteLine($"mb {microBatch} × {seqLen}, checkpointing {checkpointing}: predicted {predicted.Total:N0} ({predicted}), measured {measured:N0} bytes, ratio {(double)predicted.Total / measured:F3}");
            Assert.That((double)predicted.Total / measured, Is.InRange(0.85, 1.15));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
