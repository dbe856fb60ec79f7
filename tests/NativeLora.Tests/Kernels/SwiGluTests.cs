using NativeLora.Ops;
using NativeLora.Tensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Kernels;

public class SwiGluTests
{
    private static double Silu(double g) => g / (1 + Math.Exp(-g));

    [Test]
    public void ForwardAndBackwardMatchFloat64([Values(DType.F32, DType.BF16)] DType dtype, [Values(1, 7, 1031)] int n, [Values(false, true)] bool inPlace)
    {
        var k = TestDevice.Shared.Kernels;
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
        var hRef = new double[n];
        var dgRef = new double[n];
        var duRef = new double[n];
        for (int i = 0; i < n; i++)
        {
            hRef[i] = Silu(g[i]) * u[i];
            // independent check of the derivative: central difference of silu in float64
            double e = 1e-6;
            double dsilu = (Silu(g[i] + e) - Silu(g[i] - e)) / (2 * e);
            dgRef[i] = dh[i] * u[i] * dsilu;
            duRef[i] = dh[i] * Silu(g[i]);
        }
        double tol = Ref.Tolerance(dtype, 1e-5);
        Check.Close(h, hRef, tol, $"swiglu {dtype} n={n}", seed);
        Check.Close(tdg.ToFloatArray(), dgRef, tol, $"swiglu dgate {dtype} n={n}", seed);
        Check.Close(tdu.ToFloatArray(), duRef, tol, $"swiglu dup {dtype} n={n}", seed);
    }
}
