using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Tensors;
using NativeLora.Tests.Model;
using NativeLora.Tests.Support;
using NativeLora.Training;

namespace NativeLora.Tests.Training;

/// <summary>The planner's prediction against the allocator's measured peak of live tensor memory on real training steps (not the process RSS, which holds the .NET runtime).</summary>
public class MemoryEstimateTests : TempDirTests
{
    [TestCase(2, 64, true)]
    [TestCase(2, 64, false)]
    [TestCase(4, 128, true)]
    [TestCase(1, 256, false)]
    public void PredictionIsWithin10PercentOfTheAllocatorsPeak(int microBatch, int seqLen, bool checkpointing)
    {
        var c = GenerationTests.TinyConfig("llama") with { NumLayers = 3, VocabSize = 2000, MaxPositionEmbeddings = 512 };
        var dev = TestDevice.Shared;
        dev.EmptyCache();
        long baseline = dev.MemoryStats.Allocated;
        dev.ResetPeak();
        var lora = new LoraConfig { R = 8, Dropout = 0.05 };
        RunAndCompare();
        Assert.That(dev.MemoryStats.Allocated, Is.EqualTo(baseline), "every tensor of the run was given back to the allocator");
        dev.ValidateAllocator();

        void RunAndCompare()
        {
            using var model = GenerationTests.TinyModel(c, 1);
            using var adapter = LoraAdapter.Attach(model, lora, 1);
            model.GradientCheckpointing = checkpointing;
            var rng = new Random(1);
            var ex = Enumerable.Range(0, microBatch).Select(_ => new NativeLora.Data.TrainingExample(
                Enumerable.Range(0, seqLen).Select(_ => rng.Next(c.VocabSize)).ToArray(), Enumerable.Repeat(true, seqLen).ToArray())).ToList();
            var cfg = new TrainingConfig { Model = "m", OutputDir = Dir, MicroBatchSize = microBatch, GradientAccumulation = 1, MaxSeqLen = seqLen, MaxSteps = 2,
                GradientCheckpointing = checkpointing, EvalSteps = 100, SaveSteps = 100, LoraR = 8, ValSplit = 0 };
            new Trainer(cfg, model, adapter, ex, Array.Empty<NativeLora.Data.TrainingExample>()).Run(resume: false);
            long measured = dev.PeakLiveBytes - baseline;
            var predicted = MemoryEstimate.For(c, lora, DType.F32, microBatch, seqLen, checkpointing);
            TestContext.Progress.WriteLine($"mb {microBatch} × {seqLen}, checkpointing {checkpointing}: predicted {predicted.Total:N0} ({predicted}), measured {measured:N0} bytes, ratio {(double)predicted.Total / measured:F3}");
            Assert.That((double)predicted.Total / measured, Is.InRange(0.90, 1.10));
        }
    }

    /// <summary>
    /// QLoRA with embed_tokens on the host, on a model with Llama-like proportions (intermediate 3.5 × hidden) and a
    /// vocabulary large enough that the host table weighs: the planner's NF4 weights, host embedding and dequantize
    /// scratch against the allocator.
    /// </summary>
    [TestCase(1, 128, true)]
    [TestCase(2, 256, true)]
    [TestCase(2, 64, false)]
    public void QloraPredictionIsWithin10PercentOfTheAllocatorsPeak(int microBatch, int seqLen, bool checkpointing)
    {
        var c = GenerationTests.TinyConfig("llama") with { HiddenSize = 256, IntermediateSize = 896, NumHeads = 4, NumKvHeads = 2, HeadDim = 64, NumLayers = 2, VocabSize = 3000, MaxPositionEmbeddings = 512 };
        var dev = TestDevice.Shared;
        dev.EmptyCache();
        long baseline = dev.MemoryStats.Allocated, hostBaseline = dev.HostTensorBytes;
        var lora = new LoraConfig { R = 8, Dropout = 0.05 };
        using (var model = GenerationTests.TinyModel(c, 1))
        {
            dev.ResetPeak();
            model.QuantizeLinears();
            model.PlaceEmbeddingOnHost();
            dev.ResetPeak(); // loading and quantizing are not training
            using var adapter = LoraAdapter.Attach(model, lora, 1);
            var rng = new Random(1);
            var ex = Enumerable.Range(0, microBatch).Select(_ => new NativeLora.Data.TrainingExample(
                Enumerable.Range(0, seqLen).Select(_ => rng.Next(c.VocabSize)).ToArray(), Enumerable.Repeat(true, seqLen).ToArray())).ToList();
            var cfg = new TrainingConfig { Model = "m", Method = "qlora", OutputDir = Dir, MicroBatchSize = microBatch, GradientAccumulation = 1, MaxSeqLen = seqLen, MaxSteps = 2,
                GradientCheckpointing = checkpointing, EvalSteps = 100, SaveSteps = 100, LoraR = 8, ValSplit = 0 };
            Assert.That(cfg.EmbeddingOnHostFor(c), Is.True);
            new Trainer(cfg, model, adapter, ex, Array.Empty<NativeLora.Data.TrainingExample>()).Run(resume: false);
            long measured = dev.PeakLiveBytes - baseline;
            var predicted = MemoryEstimate.For(c, lora, DType.F32, microBatch, seqLen, checkpointing, method: "qlora", embeddingOnHost: true);
            TestContext.Progress.WriteLine($"qlora mb {microBatch} × {seqLen}, checkpointing {checkpointing}: predicted {predicted.Total:N0}, measured {measured:N0} bytes, ratio {(double)predicted.Total / measured:F3}\n" + string.Join("\n", predicted.Lines()));
            Assert.That(predicted.HostWeights, Is.EqualTo(dev.HostTensorBytes - hostBaseline), "the host table is what the planner moved");
            Assert.That((double)predicted.Total / measured, Is.InRange(0.90, 1.10));
        }
        Assert.That(dev.MemoryStats.Allocated, Is.EqualTo(baseline), "every tensor of the run was given back to the allocator");
        Assert.That(dev.HostTensorBytes, Is.EqualTo(hostBaseline));
    }
}
