using NativeLora.Export;
using NativeLora.Gguf;
using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.SafeTensors;
using NativeLora.Tensors;
using NativeLora.Tests.Model;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Export;

public class MergeTests : TempDirTests
{
    private static void Randomize(LoraAdapter adapter, Random rng)
    {
        foreach (var m in adapter.Modules)
        {
            m.B.CopyFrom<float>(Check.RandomFloats(rng, m.B.ElementCount, 0.2));
            if (m.Magnitude != null) m.Magnitude.CopyFrom<float>(m.Magnitude.ToArray<float>().Select(v => v * (float)(1 + 0.2 * rng.NextDouble())).ToArray());
        }
        foreach (var s in adapter.SavedModules) s.Master.CopyFrom<float>(Check.RandomFloats(rng, s.Master.ElementCount, 0.1));
    }

    [TestCase("lora")]
    [TestCase("rslora")]
    [TestCase("dora")]
    [TestCase("lm_head")]
    public void MergedModelGivesTheLogitsOfBasePlusAdapter(string kind)
    {
        var c = GenerationTests.TinyConfig("qwen2"); // q/k/v biases too
        var baseDir = Path.Combine(Dir, "base");
        ModelDirectory.Save(baseDir, c, RandomInit.Create(c, 8, 0.08), DType.F32);
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        var tokens = TokenBatch.FromSequences(new[] { Enumerable.Range(0, 11).Select(_ => rng.Next(c.VocabSize)).ToArray() });
        float[] expected;
        var adapterDir = Path.Combine(Dir, "adapter");
        using (var model = ModelDirectory.Load(TestDevice.Shared, baseDir, DType.F32))
        {
            var cfg = new LoraConfig
            {
                R = 4, Alpha = 8, UseRslora = kind == "rslora", UseDora = kind == "dora",
                ModulesToSave = kind == "lm_head" ? new[] { "lm_head" } : Array.Empty<string>(),
            };
            using var adapter = LoraAdapter.Attach(model, cfg, 3);
            Randomize(adapter, rng);
            adapter.SyncCompute(model.Kernels);
            expected = model.Logits(tokens);
            adapter.Save(adapterDir);
        }
        var outDir = Path.Combine(Dir, "merged");
        LoraMerge.Run(TestDevice.Shared, baseDir, new[] { adapterDir }, null, outDir, DType.F32, maxShardBytes: 30_000);
        Assert.That(File.Exists(Path.Combine(outDir, ShardedSafeTensors.IndexFileName)), Is.True, "sharded above the size limit");
        using var merged = ModelDirectory.Load(TestDevice.Shared, outDir, DType.F32);
        Check.Close(merged.Logits(tokens), Ref.ToDouble(expected), 1e-5, $"merged {kind}", seed);
    }

    [Test]
    public void QloraBaseSavedByTransformersMergesIntoDenseWeights()
    {
        var c = GenerationTests.TinyConfig("llama");
        var baseDir = Path.Combine(Dir, "base");
        var w = RandomInit.Create(c, 8, 0.08);
        ModelDirectory.Save(baseDir, c, w, DType.F32);
        ModelDirectoryTests.WriteBnb4BitCheckpoint(baseDir, c, w); // projections as bitsandbytes NF4
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        var tokens = TokenBatch.FromSequences(new[] { Enumerable.Range(0, 9).Select(_ => rng.Next(c.VocabSize)).ToArray() });
        float[] expected;
        var adapterDir = Path.Combine(Dir, "adapter");
        using (var model = ModelDirectory.Load(TestDevice.Shared, baseDir, DType.F32))
        {
            using var adapter = LoraAdapter.Attach(model, new LoraConfig { R = 4, Alpha = 8 }, 3);
            Randomize(adapter, rng);
            adapter.SyncCompute(model.Kernels);
            expected = model.Logits(tokens);
            adapter.Save(adapterDir);
        }
        var outDir = Path.Combine(Dir, "merged");
        LoraMerge.Run(TestDevice.Shared, baseDir, new[] { adapterDir }, null, outDir, DType.F32);
        using (var files = ShardedSafeTensors.Open(outDir))
            Assert.That(files.Names.Where(n => files.Get(n).DType != SafeTensorsDType.F32), Is.Empty, "merged weights are dense");
        using var merged = ModelDirectory.Load(TestDevice.Shared, outDir, DType.F32);
        Check.Close(merged.Logits(tokens), Ref.ToDouble(expected), 1e-5, "merged over an NF4 base", seed);
    }

    [Test]
    public void WeightedCombinationFollowsPeftLinearMode()
    {
        var c = GenerationTests.TinyConfig("llama");
        var baseDir = Path.Combine(Dir, "base");
        var w = RandomInit.Create(c, 8, 0.08);
        ModelDirectory.Save(baseDir, c, w, DType.F32);
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        var dirs = new[] { Path.Combine(Dir, "a1"), Path.Combine(Dir, "a2") };
        var factors = new List<(float[] A, float[] B, float Scale)>();
        string target = "model.layers.1.mlp.down_proj";
        using (var model = ModelDirectory.Load(TestDevice.Shared, baseDir, DType.F32))
            for (int i = 0; i < 2; i++)
            {
                using var adapter = LoraAdapter.Attach(model, new LoraConfig { R = 3, Alpha = 4 + 4 * i, TargetModules = new[] { "down_proj" } }, 10 + i);
                Randomize(adapter, rng);
                var m = adapter.Modules.Single(x => x.Target == target);
                factors.Add((m.A.ToArray<float>(), m.B.ToArray<float>(), m.Scale));
                adapter.Save(dirs[i]);
            }
        var outDir = Path.Combine(Dir, "merged");
        double[] weights = { 0.7, 0.3 };
        LoraMerge.Run(TestDevice.Shared, baseDir, dirs, weights, outDir, DType.F32);
        // PEFT add_weighted_adapter(linear): B = Σ √wᵢ Bᵢ, A = Σ √wᵢ sᵢ Aᵢ, ΔW = B·A
        int outF = c.HiddenSize, inF = c.IntermediateSize, r = 3;
        var expected = new double[outF * inF];
        for (int o = 0; o < outF; o++)
            for (int i = 0; i < inF; i++)
            {
                double d = 0;
                for (int j = 0; j < r; j++)
                {
                    double b = 0, a = 0;
                    for (int t = 0; t < 2; t++)
                    {
                        b += Math.Sqrt(weights[t]) * factors[t].B[o * r + j];
                        a += Math.Sqrt(weights[t]) * factors[t].Scale * factors[t].A[j * inF + i];
                    }
                    d += b * a;
                }
                expected[o * inF + i] = w[target + ".weight"][o * inF + i] + d;
            }
        using var f = ShardedSafeTensors.Open(outDir);
        Check.Close(f.ReadAsFloat32(target + ".weight"), expected, 1e-6, "weighted merge", seed);
        Assert.That(f.ReadAsFloat32("model.layers.1.mlp.up_proj.weight"), Is.EqualTo(w["model.layers.1.mlp.up_proj.weight"]), "unadapted tensors are copied");
    }

    [Test]
    public void BadInputsAreRejectedClearly()
    {
        var c = GenerationTests.TinyConfig("llama");
        var baseDir = Path.Combine(Dir, "base");
        ModelDirectory.Save(baseDir, c, RandomInit.Create(c, 8), DType.F32);
        var other = GenerationTests.TinyConfig("llama") with { HiddenSize = 32, HeadDim = 8 };
        var otherDir = Path.Combine(Dir, "other");
        ModelDirectory.Save(otherDir, other, RandomInit.Create(other, 8), DType.F32);
        var adapterDir = Path.Combine(Dir, "adapter");
        using (var m = ModelDirectory.Load(TestDevice.Shared, otherDir, DType.F32))
        using (var a = LoraAdapter.Attach(m, new LoraConfig { R = 2, TargetModules = new[] { "q_proj" } }, 1))
            a.Save(adapterDir);
        var e = Assert.Throws<InvalidDataException>(() => LoraMerge.Run(TestDevice.Shared, baseDir, new[] { adapterDir }, null, Path.Combine(Dir, "out"), DType.BF16))!;
        Assert.That(e.Message, Does.Contain("does not fit").And.Contain("q_proj.lora_A.weight"));
        Assert.Throws<ArgumentException>(() => LoraMerge.Run(TestDevice.Shared, baseDir, new[] { adapterDir }, new[] { 0.5, 0.5 }, Path.Combine(Dir, "out"), DType.BF16));
        Assert.Throws<ArgumentException>(() => LoraMerge.Run(TestDevice.Shared, baseDir, new[] { adapterDir }, null, baseDir, DType.BF16));
    }
}
