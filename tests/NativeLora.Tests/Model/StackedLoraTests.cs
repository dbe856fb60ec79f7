using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Ops;
using NativeLora.Tensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Model;

/// <summary>
/// The adapters of projections that read one input (q, k, v; gate, up) run as one stacked low-rank product when they
/// have no dropout and no DoRA (issue #14: one GEMM for the stacked A). The stacked forward and backward must give
/// what the projections give one by one: outputs, dx, and every adapter gradient.
/// </summary>
public class StackedLoraTests
{
    [TestCase(false, DType.F32, "q_proj,k_proj,v_proj", 3)]
    [TestCase(true, DType.F32, "q_proj,k_proj,v_proj", 3)]
    [TestCase(true, DType.BF16, "q_proj,k_proj,v_proj", 3)]
    [TestCase(false, DType.F32, "q_proj,v_proj", 2)] // PEFT's default targets: q and v stack, k has no adapter
    [TestCase(false, DType.F32, "q_proj,k_proj,v_proj,dora", 0)] // DoRA: not stacked
    public void StackedEqualsOneByOne(bool gpuVariant, DType dtype, string targets, int expectStacked)
    {
        var k = TestDevice.Variant(gpuVariant);
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        var c = GenerationTests.TinyConfig("qwen2"); // with q/k/v biases
        using var model = GenerationTests.TinyModel(c, 4, dtype);
        bool dora = targets.EndsWith(",dora");
        var lora = new LoraConfig { R = 4, Alpha = 8, Dropout = 0, UseDora = dora, TargetModules = targets.Replace(",dora", "").Split(',') };
        using var adapter = LoraAdapter.Attach(model, lora, seed);
        foreach (var m in adapter.Modules) m.B.CopyFrom<float>(Check.RandomFloats(rng, (int)m.B.ElementCount, 0.3)); // B ≠ 0: every path carries signal
        adapter.SyncCompute(k);
        var layer = model.Layers[1];
        var lins = new[] { layer.QProj, layer.KProj, layer.VProj };
        int n = 11;
        var x = Ref.Random(rng, dtype, n * c.HiddenSize);
        var dys = lins.Select(l => Ref.Random(rng, dtype, n * l.OutFeatures)).ToArray();
        using var tx = Ref.Upload(dtype, x, n, c.HiddenSize);
        var tdys = lins.Select((l, i) => Ref.Upload(dtype, dys[i], n, l.OutFeatures)).ToArray();

        (float[][] Y, float[] Dx, float[][] Grads) Run(bool shared)
        {
            foreach (var m in adapter.Modules) m.ZeroGradients(k);
            var ys = lins.Select(l => Ref.Poisoned(dtype, n, l.OutFeatures)).ToArray();
            using var dx = Ref.Poisoned(dtype, n, c.HiddenSize);
            LoraSaved?[] saved;
            if (shared)
            {
                saved = Linear.ForwardShared(k, lins, tx, ys, null);
                Assert.That(saved.Count(st => st?.Stacked == true), Is.EqualTo(expectStacked), "adapters stacked");
                Linear.BackwardShared(k, lins, tx, saved, tdys, dx);
            }
            else
            {
                saved = lins.Select((l, i) => l.Forward(k, tx, ys[i])).ToArray();
                for (int i = 0; i < lins.Length; i++) lins[i].Backward(k, tx, saved[i], tdys[i], dx, accumulate: i > 0);
            }
            var grads = lins.Where(l => l.Lora != null).SelectMany(l => l.Lora!.Trainables().Select(t => t.Grad.ToArray<float>())).ToArray();
            var result = (ys.Select(y => y.ToFloatArray()).ToArray(), dx.ToFloatArray(), grads);
            foreach (var st in saved) st?.Dispose();
            foreach (var y in ys) y.Dispose();
            return result;
        }
        var stacked = Run(true);
        var single = Run(false);
        double tol = Ref.Tolerance(dtype, 1e-5);
        string what = $"{(gpuVariant ? "gpu" : "cpu")}-variant {dtype} {targets}";
        for (int i = 0; i < 3; i++) Check.Close(stacked.Y[i], Ref.ToDouble(single.Y[i]), tol, $"{what} y of {lins[i].Name}", seed);
        Check.Close(stacked.Dx, Ref.ToDouble(single.Dx), tol, what + " dx", seed);
        for (int i = 0; i < stacked.Grads.Length; i++) Check.Close(stacked.Grads[i], Ref.ToDouble(single.Grads[i]), tol, $"{what} adapter gradient {i}", seed);
        foreach (var t in tdys) t.Dispose();
    }
}
