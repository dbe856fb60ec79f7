using NativeLora.Data;
using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Tests.Model;
using NativeLora.Tests.Support;
using NativeLora.Training;

namespace NativeLora.Tests.Training;

/// <summary>
/// Proof that LoRA training learns: a tiny random model cannot know a fixed mapping a → f(a) hidden
/// behind noise tokens; after training on responses only, validation loss (new noise) falls by a
/// large margin and greedy generation answers the mapping.
/// </summary>
public class LearningTests : TempDirTests
{
    internal const int Bos = 1, Sep = 2, Eos = 3;

    internal static (List<TrainingExample> Train, List<TrainingExample> Val, Dictionary<int, int> Map) SyntheticTask(int seed, int pairs = 12)
    {
        var rng = new Random(seed);
        var keys = Enumerable.Range(10, pairs).ToArray();
        var values = Enumerable.Range(40, pairs).OrderBy(_ => rng.Next()).ToArray();
        var map = keys.Zip(values).ToDictionary(p => p.First, p => p.Second);
        TrainingExample Make(int a, Random r)
        {
            var ids = new[] { Bos, 60 + r.Next(30), a, Sep, map[a], Eos };
            return new TrainingExample(ids, new[] { false, false, false, false, true, true });
        }
        var train = Enumerable.Range(0, 12).SelectMany(_ => keys.Select(a => Make(a, rng))).ToList();
        var val = keys.Select(a => Make(a, rng)).ToList();
        return (train, val, map);
    }

    internal static TrainingConfig FastConfig(string outDir, bool dora = false, bool rslora = false) => new()
    {
        Model = "tiny", OutputDir = outDir, LoraR = 8, LoraAlpha = rslora ? 8 * Math.Sqrt(8) / 2 : 16, LoraDropout = 0.0, UseDora = dora, UseRslora = rslora,
        LearningRate = 1e-2, WarmupRatio = 0.05, Epochs = 8, MicroBatchSize = 4, GradientAccumulation = 1, MaxSeqLen = 24,
        EvalSteps = 1000, SaveSteps = 1000, GradientCheckpointing = true, Seed = 5,
    };

    [Test]
    public void LoraLearnsAMappingTheBaseCannotKnow([Values("lora", "rslora", "dora")] string variant)
    {
        var (train, val, map) = SyntheticTask(11);
        using var model = GenerationTests.TinyModel(GenerationTests.TinyConfig("llama"), 3);
        var cfg = FastConfig(Dir, dora: variant == "dora", rslora: variant == "rslora");
        using var adapter = LoraAdapter.Attach(model, cfg.ToLoraConfig(), cfg.Seed);
        var trainer = new Trainer(cfg, model, adapter, train, val);
        double before = trainer.ValidationLoss();
        trainer.Run(resume: false);
        double after = trainer.ValidationLoss();
        TestContext.Progress.WriteLine($"{variant}: validation loss {before:F3} -> {after:F3} in {trainer.History.Count} steps");
        Assert.That(after, Is.LessThan(before * 0.25), $"{variant}: validation loss {before:F3} -> {after:F3}");

        var decoder = new Generator(model);
        int correct = 0;
        foreach (var (a, fa) in map)
        {
            using var cache = new KvCache(model, 1, 16);
            var logits = decoder.Prefill(cache, new KvSequence(), new[] { Bos, 75, a, Sep });
            if (Sampler.ArgMax(logits) == fa) correct++;
        }
        Assert.That(correct, Is.GreaterThanOrEqualTo(map.Count - 1), $"{variant}: {correct}/{map.Count} answers right after training");
    }

    /// <summary>The GPU path's mixed precision (bf16 activations and frozen weights, f32 adapter masters and optimizer), run with the GPU kernel variants on the CPU.</summary>
    [Test]
    public void Bf16MixedPrecisionLearnsToo()
    {
        var (train, val, _) = SyntheticTask(13);
        using var model = GenerationTests.TinyModel(GenerationTests.TinyConfig("llama"), 3, NativeLora.Tensors.DType.BF16);
        model.Kernels = TestDevice.Variant(gpu: true);
        var cfg = FastConfig(Dir) with { Epochs = 4 };
        using var adapter = LoraAdapter.Attach(model, cfg.ToLoraConfig(), cfg.Seed);
        Assert.That(adapter.Modules[0].ACompute.DType, Is.EqualTo(NativeLora.Tensors.DType.BF16));
        Assert.That(adapter.Modules[0].A.DType, Is.EqualTo(NativeLora.Tensors.DType.F32));
        var trainer = new Trainer(cfg, model, adapter, train, val);
        double before = trainer.ValidationLoss();
        trainer.Run(resume: false);
        double after = trainer.ValidationLoss();
        TestContext.Progress.WriteLine($"bf16: validation loss {before:F3} -> {after:F3}");
        Assert.That(after, Is.LessThan(before * 0.5));
    }
}
