using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Ops;
using NativeLora.Tensors;
using NativeLora.Tests.Support;
using LoraReference = NativeLora.Kernels.Lora.Reference;

namespace NativeLora.Tests.Kernels;

/// <summary>
/// An adapted linear layer (LoRA, rsLoRA scale, dropout, DoRA) forward and backward against the float64
/// reference (Kernels.Lora.Reference, checked here against finite differences), for the fused GPU variant
/// and the unfused CPU variant, and the two variants against each other.
/// </summary>
public class LoraTests
{
    private static IEnumerable<TestCaseData> Cases()
    {
        foreach (var gpu in new[] { false, true })
            foreach (var (dropout, dora, rs, bias) in new[] { (0f, false, false, false), (0.3f, false, false, true), (0f, false, true, false), (0f, true, false, true), (0.25f, true, false, false) })
            {
                yield return new TestCaseData(gpu, DType.F32, dropout, dora, rs, bias);
                if (gpu) yield return new TestCaseData(gpu, DType.BF16, dropout, dora, rs, bias);
            }
    }

    [TestCaseSource(nameof(Cases))]
    public void AdaptedLinearMatchesFloat64(bool gpuVariant, DType dtype, float dropout, bool dora, bool rslora, bool withBias)
    {
        var dev = TestDevice.Shared;
        var k = TestDevice.Variant(gpuVariant);
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        int n = 13, inF = 40, outF = 24, r = 4;
        var cfg = new LoraConfig { R = r, Alpha = 8, Dropout = dropout, UseRslora = rslora, UseDora = dora };
        var x = Ref.Random(rng, dtype, n * inF);
        var w0 = Ref.Random(rng, dtype, outF * inF, 0.3);
        var bias = withBias ? Ref.Random(rng, dtype, outF, 0.5) : null;
        var a = Ref.Random(rng, dtype, r * inF, 0.5);
        var b = Ref.Random(rng, dtype, outF * r, 0.5); // non-zero B so every path carries signal
        var dy = Ref.Random(rng, dtype, n * outF);
        var mag = dora ? Ref.Random(rng, DType.F32, outF).Select(v => 1f + Math.Abs(v)).ToArray() : null;

        using var module = new LoraModule(dev, "t", inF, outF, r, cfg.Scale, dropout, dtype, dora) { Training = true, DropoutSeed = (ulong)seed * 7919UL };
        module.A.CopyFrom<float>(a);
        module.B.CopyFrom<float>(b);
        if (mag != null) module.Magnitude!.CopyFrom<float>(mag);
        module.SyncCompute(k);
        module.ZeroGradients(k);
        using var tw = Ref.Upload(dtype, w0, outF, inF);
        using var tb = bias != null ? Ref.Upload(dtype, bias, outF) : null;
        var linear = new Linear("t", tw, tb) { Lora = module };
        using var tx = Ref.Upload(dtype, x, n, inF);
        using var ty = Ref.Poisoned(dtype, n, outF);
        using var tdy = Ref.Upload(dtype, dy, n, outF);
        using var tdx = Ref.Poisoned(dtype, n, inF);
        using (var saved = linear.Forward(k, tx, ty))
            linear.Backward(k, tx, saved, tdy, tdx, accumulate: false);

        var re = LoraReference.Run(Ref.ToDouble(x), Ref.ToDouble(w0), bias == null ? null : Ref.ToDouble(bias), Ref.ToDouble(a), Ref.ToDouble(b),
            mag == null ? null : Ref.ToDouble(mag), Ref.ToDouble(dy), n, inF, outF, r, cfg.Scale, dropout, module.DropoutSeed);
        string what = $"{(gpuVariant ? "fused" : "unfused")} {dtype} p={dropout} dora={dora} rslora={rslora} bias={withBias}";
        double tol = Ref.Tolerance(dtype, 1e-5);
        Check.Close(ty.ToFloatArray(), re.Y, tol, what + " y", seed);
        Check.Close(tdx.ToFloatArray(), re.Dx, tol, what + " dx", seed);
        Check.Close(module.AGrad.ToArray<float>(), re.DA, tol, what + " dA", seed);
        Check.Close(module.BGrad.ToArray<float>(), re.DB, tol, what + " dB", seed);
        if (dora) Check.Close(module.MagnitudeGrad!.ToArray<float>(), re.Dm, tol, what + " dm", seed);
    }

    [Test]
    public void FusedAndUnfusedVariantsAgree([Values(0f, 0.2f)] float dropout)
    {
        var dev = TestDevice.Shared;
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        int n = 9, inF = 33, outF = 17, r = 3;
        var x = Check.RandomFloats(rng, n * inF);
        var w0 = Check.RandomFloats(rng, outF * inF, 0.3);
        var a = Check.RandomFloats(rng, r * inF, 0.5);
        var b = Check.RandomFloats(rng, outF * r, 0.5);
        var dy = Check.RandomFloats(rng, n * outF);
        (float[] Y, float[] Dx, float[] DA) RunVariant(bool gpu)
        {
            var k = TestDevice.Variant(gpu);
            using var m = new LoraModule(dev, "t", inF, outF, r, 2f, dropout, DType.F32) { Training = true, DropoutSeed = 99 };
            m.A.CopyFrom<float>(a); m.B.CopyFrom<float>(b); m.ZeroGradients(k);
            using var tw = Ref.Upload(DType.F32, w0, outF, inF);
            using var tx = Ref.Upload(DType.F32, x, n, inF);
            using var ty = Ref.Poisoned(DType.F32, n, outF);
            using var tdy = Ref.Upload(DType.F32, dy, n, outF);
            using var tdx = Ref.Poisoned(DType.F32, n, inF);
            var lin = new Linear("t", tw, null) { Lora = m };
            using (var saved = lin.Forward(k, tx, ty)) lin.Backward(k, tx, saved, tdy, tdx, false);
            return (ty.ToArray<float>(), tdx.ToArray<float>(), m.AGrad.ToArray<float>());
        }
        var fused = RunVariant(true);
        var unfused = RunVariant(false);
        Check.Close(fused.Y, Ref.ToDouble(unfused.Y), 1e-6, "y fused vs unfused", seed);
        Check.Close(fused.Dx, Ref.ToDouble(unfused.Dx), 1e-6, "dx fused vs unfused", seed);
        Check.Close(fused.DA, Ref.ToDouble(unfused.DA), 1e-6, "dA fused vs unfused", seed);
    }

    [Test]
    public void DropoutKeepsAboutOneMinusPAndIsDeterministic()
    {
        int kept = 0;
        for (long i = 0; i < 100000; i++) if (NativeLora.Kernels.Lora.Keep(42, i, 0.3f)) kept++;
        Assert.That(kept / 100000.0, Is.EqualTo(0.7).Within(0.01));
        Assert.That(Enumerable.Range(0, 100).Select(i => NativeLora.Kernels.Lora.Keep(7, i, 0.5f)),
            Is.EqualTo(Enumerable.Range(0, 100).Select(i => NativeLora.Kernels.Lora.Keep(7, i, 0.5f))));
        Assert.That(Enumerable.Range(0, 100).Select(i => NativeLora.Kernels.Lora.Keep(7, i, 0.5f)),
            Is.Not.EqualTo(Enumerable.Range(0, 100).Select(i => NativeLora.Kernels.Lora.Keep(8, i, 0.5f))));
    }

    [Test]
    public void ReferenceMatchesFiniteDifferences([Values(false, true)] bool dora)
    {
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        int n = 2, inF = 3, outF = 4, r = 2;
        double s = 1.5;
        double[] R(int len) => Ref.ToDouble(Check.RandomFloats(rng, len));
        var x = R(n * inF); var w0 = R(outF * inF); var a = R(r * inF); var b = R(outF * r); var dy = R(n * outF);
        var m = dora ? R(outF).Select(v => 1 + Math.Abs(v)).ToArray() : null;
        // dropout 0.25 with a fixed mask: the loss stays differentiable in every input
        LoraReference Run(double[] xx, double[] aa, double[] bb, double[]? mm) => LoraReference.Run(xx, w0, null, aa, bb, mm, dy, n, inF, outF, r, s, 0.25f, (ulong)seed);
        var re = Run(x, a, b, m);
        double L(double[] xx, double[] aa, double[] bb, double[]? mm) => Ref.Dot(Run(xx, aa, bb, mm).Y, dy);
        Assert.That(Check.RelativeError(Array.ConvertAll(re.Dx, v => (float)v), Ref.NumericGradient(v => L(v, a, b, m), x)), Is.LessThan(1e-6));
        if (!dora) // with DoRA the norm is detached on purpose, so only x and m follow the true derivative
        {
            Assert.That(Check.RelativeError(Array.ConvertAll(re.DA, v => (float)v), Ref.NumericGradient(v => L(x, v, b, m), a)), Is.LessThan(1e-6));
            Assert.That(Check.RelativeError(Array.ConvertAll(re.DB, v => (float)v), Ref.NumericGradient(v => L(x, a, v, m), b)), Is.LessThan(1e-6));
        }
        else
            Assert.That(Check.RelativeError(Array.ConvertAll(re.Dm, v => (float)v), Ref.NumericGradient(v => L(x, a, b, v), m!)), Is.LessThan(1e-6));
    }
}
