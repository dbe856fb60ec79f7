using NativeLora.Kernels;
using NativeLora.Ops;
using NativeLora.Tensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Kernels;

public class SwiGluTests
{
    [Test]
    public void ForwardAndBackwardMatchFloat64([Values(false, true)] bool gpuVariant, [Values(DType.F32, DType.BF16)] DType dtype, [Values(1, 7, 1031)] int n, [Values(false, true)] bool inPlace)
    {
        var k = TestDevice.Variant(gpuVariant);
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        var g = Ref.Random(rng, dtype, n, 6);
        var u = Ref.Random(rng, dtype, n, 2);
        var dh = Ref.Random(rng, dtype, n);
        using var tg = Ref.Upload(dtype, g, n);
        using var tu = Ref.Upload(dtype, u, n);
        using var tdh = Ref.Upload(dtype, dh, n);
        using var th = Ref.Poisoned(dtype, n);
        SwiGluOp.Forward(k, tg, tu, th);
        var h = th.ToFloatArray();
        using var dgBuf = Ref.Poisoned(dtype, n);
        using var duBuf = Ref.Poisoned(dtype, n);
        var tdg = inPlace ? tg : dgBuf;
        var tdu = inPlace ? tu : duBuf;
        SwiGluOp.Backward(k, tg, tu, tdh, tdg, tdu);
        var hRef = SwiGlu.Reference.Forward(Ref.ToDouble(g), Ref.ToDouble(u));
        var (dgRef, duRef) = SwiGlu.Reference.Backward(Ref.ToDouble(g), Ref.ToDouble(u), Ref.ToDouble(dh));
        double tol = Ref.Tolerance(dtype, 1e-5);
        Check.Close(h, hRef, tol, $"swiglu {(gpuVariant ? "gpu" : "cpu")}-variant {dtype} n={n}", seed);
        Check.Close(tdg.ToFloatArray(), dgRef, tol, $"swiglu dgate {dtype} n={n}", seed);
        Check.Close(tdu.ToFloatArray(), duRef, tol, $"swiglu dup {dtype} n={n}", seed);
    }

    [Test]
    public void ReferenceGradientsMatchFiniteDifferences()
    {
        var rng = new Random(Check.FreshSeed());
        int n = 9;
        var g = Ref.ToDouble(Check.RandomFloats(rng, n, 6));
        var u = Ref.ToDouble(Check.RandomFloats(rng, n, 2));
        var dh = Ref.ToDouble(Check.RandomFloats(rng, n));
        var (dg, du) = SwiGlu.Reference.Backward(g, u, dh);
        var ndg = Ref.NumericGradient(x => Ref.Dot(SwiGlu.Reference.Forward(x, u), dh), g);
        var ndu = Ref.NumericGradient(x => Ref.Dot(SwiGlu.Reference.Forward(g, x), dh), u);
        Assert.That(Check.RelativeError(Array.ConvertAll(dg, v => (float)v), ndg), Is.LessThan(1e-6));
        Assert.That(Check.RelativeError(Array.ConvertAll(du, v => (float)v), ndu), Is.LessThan(1e-6));
    }
}
