using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Native;
using NativeLora.Tests.Model;
using NativeLora.Tests.Support;
using NativeLora.Training;

namespace NativeLora.Tests.Training;

/// <summary>
/// The device operations (ILGPU launches, GEMM calls, memsets) of one LoRA training step, counted with the GPU
/// variants on the CPU accelerator: what a CUDA step issues. Not timed: on a GPU each operation costs a few µs
/// of launch whatever its size, so their number is part of the step time (issue #14, "count kernel launches").
/// </summary>
public class LaunchCountTests
{
    private readonly record struct Count(long Kernels, long Gemms, long Memsets)
    {
        public long Total => Kernels + Gemms + Memsets;
        public static Count operator -(Count a, Count b) => new(a.Kernels - b.Kernels, a.Gemms - b.Gemms, a.Memsets - b.Memsets);
    }

    private static Count Now(CausalLm m) => new(m.Kernels.Launches, NativeCore.GemmCalls, m.Device.Memsets);

    // one step as the Trainer takes it: zero, forward+backward, norm, update, refresh the compute copies
    private static (Count Step, Count Optimizer, int Tensors, int Runs, long SegmentsAllocated) CountStep(int layers, string optim)
    {
        var c = GenerationTests.TinyConfig("llama") with { NumLayers = layers };
        using var model = GenerationTests.TinyModel(c, 5);
        model.Kernels = TestDevice.Variant(gpu: true);
        // the bench's adapter: r on all seven projections, no dropout (so q/k/v and gate/up stack)
        var lora = new LoraConfig { R = 4, Alpha = 8, Dropout = 0, TargetModules = new[] { "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj" } };
        using var adapter = LoraAdapter.Attach(model, lora, 1);
        adapter.SetTraining(true);
        using var opt = new AdamWOptimizer(model.Device, adapter.Arenas, eightBit: optim.EndsWith("8bit"), minEightBitElements: 0, kernels: model.Kernels);
        var rng = new Random(3);
        var batch = TokenBatch.FromSequences(Enumerable.Range(0, 2).Select(_ => Enumerable.Range(0, 16).Select(_ => rng.Next(c.VocabSize)).ToArray()).ToArray());
        void Step()
        {
            opt.ZeroGradients();
            model.ForwardBackward(batch);
            double norm = opt.GradientNorm();
            opt.Step(1e-3f, (float)Math.Min(1, 1 / (norm + 1e-6)));
            adapter.SyncCompute(model.Kernels);
        }
        Step(); // compiles the kernels and fills the allocator's cache; the count does not depend on it
        var t0 = Now(model);
        long segments0 = model.Device.MemoryStats.SegmentAllocations;
        Step();
        var step = Now(model) - t0;
        long segments = model.Device.MemoryStats.SegmentAllocations - segments0;
        var o0 = Now(model);
        opt.ZeroGradients();
        opt.GradientNorm();
        opt.Step(1e-3f, 1f);
        adapter.SyncCompute(model.Kernels);
        return (step, Now(model) - o0, adapter.Trainables().Count(), opt.RunCount, segments);
    }

    [TestCase("adamw")]
    [TestCase("adamw_8bit")]
    public void OptimizerWorkIsAFewOperationsPerArenaNotPerTensor(string optim)
    {
        var two = CountStep(2, optim);
        var four = CountStep(4, optim);
        TestContext.Progress.WriteLine($"{optim}: {two.Tensors} / {four.Tensors} adapter tensors in {two.Runs} / {four.Runs} runs; optimizer " +
                                       $"{two.Optimizer.Total} / {four.Optimizer.Total} operations (2 / 4 layers)");
        Assert.That(two.Runs, Is.EqualTo(1), "one arena of back-to-back tensors, one run");
        // zero (1 memset) + sum of squares (1) + update (1) + the bf16/f16 cast (f32 here: none) per run
        Assert.That(two.Optimizer.Total, Is.EqualTo(3));
        Assert.That(four.Optimizer, Is.EqualTo(two.Optimizer), "twice the tensors, the same number of launches");
    }

    [Test]
    public void LaunchesPerLayerAndPerStep()
    {
        var two = CountStep(2, "adamw");
        var four = CountStep(4, "adamw");
        var perLayer = new Count((four.Step.Kernels - two.Step.Kernels) / 2, (four.Step.Gemms - two.Step.Gemms) / 2, (four.Step.Memsets - two.Step.Memsets) / 2);
        var fixedPart = two.Step - new Count(2 * perLayer.Kernels, 2 * perLayer.Gemms, 2 * perLayer.Memsets);
        TestContext.Progress.WriteLine($"per layer: {perLayer.Kernels} ILGPU kernels + {perLayer.Gemms} GEMMs + {perLayer.Memsets} memsets = {perLayer.Total}; " +
                                       $"per step besides: {fixedPart.Kernels} + {fixedPart.Gemms} + {fixedPart.Memsets} = {fixedPart.Total}");
        Assert.That(two.SegmentsAllocated + four.SegmentsAllocated, Is.EqualTo(0), "a step like the one before it takes no new device memory: every tensor comes from the allocator's cache");
        Assert.That(perLayer.Memsets, Is.EqualTo(0), "no fills inside a layer (attention's dK/dV: the last block writes with beta 0)");
        Assert.That(fixedPart.Memsets, Is.EqualTo(1), "one fill per step: the gradients, one memset for the arena");
        Assert.That(four.Step - two.Step, Is.EqualTo(new Count(2 * perLayer.Kernels, 2 * perLayer.Gemms, 2 * perLayer.Memsets)), "every layer issues the same operations");
        // the ceilings sit at today's counts (bench/RESULTS.md, issue #14): more operations per layer is a regression to explain
        Assert.That(perLayer.Total, Is.LessThanOrEqualTo(PerLayerCeiling));
        Assert.That(fixedPart.Total, Is.LessThanOrEqualTo(PerStepCeiling));
    }

    private const long PerLayerCeiling = 200, PerStepCeiling = 100;
}
