using NativeLora.Kernels;
using NativeLora.Ops;
using NativeLora.Tensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Kernels;

public class RmsNormTests
{
    private static double[] Forward(double[] x, double[] w, int rows, int dim, double eps, double[]? rstd = null) => RmsNorm.Reference.Forward(x, w, rows, dim, eps, rstd);
    private static (double[] dx, double[] dw) Backward(double[] x, double[] w, double[] dy, int rows, int dim, double eps) => RmsNorm.Reference.Backward(x, w, dy, rows, dim, eps);

    // dim = 1 is left out on purpose: there y ≈ sign(x)·w and the exact dx is O(eps), all cancellation.
    [Test]
    public void ForwardAndBackwardMatchFloat64([Values(false, true)] bool gpuVariant, [Values(DType.F32, DType.BF16)] DType dtype,
        [Values(1, 7, 33)] int rows, [Values(3, 64, 257)] int dim)
    {
        var k = TestDevice.Variant(gpuVariant);
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        const float eps = 1e-5f;
        var x = Ref.Random(rng, dtype, rows * dim, 2);
        var w = Ref.Random(rng, dtype, dim);
        var dy = Ref.Random(rng, dtype, rows * dim);
        using var tx = Ref.Upload(dtype, x, rows, dim);
        using var tw = Ref.Upload(dtype, w, dim);
        using var tdy = Ref.Upload(dtype, dy, rows, dim);
        using var ty = Ref.Poisoned(dtype, rows, dim);
        using var trstd = Ref.Poisoned(DType.F32, rows);
        using var tdx = Ref.Poisoned(dtype, rows, dim);
        using var tdw = TestDevice.Shared.Allocate(DType.F32, dim);
        ElementwiseOp.Zero(k, tdw);
        RmsNormOp.Forward(k, tx, tw, ty, trstd, eps);
        RmsNormOp.Backward(k, tx, tw, tdy, trstd, tdx, tdw);

        var rstd = new double[rows];
        var yRef = Forward(Ref.ToDouble(x), Ref.ToDouble(w), rows, dim, eps, rstd);
        var (dxRef, dwRef) = Backward(Ref.ToDouble(x), Ref.ToDouble(w), Ref.ToDouble(dy), rows, dim, eps);
        string what = $"rmsnorm {(gpuVariant ? "gpu" : "cpu")}-variant {dtype} rows={rows} dim={dim}";
        double tol = Ref.Tolerance(dtype, 1e-5);
        Check.Close(ty.ToFloatArray(), yRef, tol, what + " y", seed);
        Check.Close(trstd.ToFloatArray(), rstd, 1e-5, what + " rstd", seed);
        Check.Close(tdx.ToFloatArray(), dxRef, tol, what + " dx", seed);
        Check.Close(tdw.ToFloatArray(), dwRef, Ref.Tolerance(dtype, 1e-5), what + " dw", seed);
    }

    /// <summary>
    /// The residual riding in the norm's kernel (the layer's h = x + branch before its norm, and dx + the residual's
    /// gradient after the backward) gives bit for bit what the separate add gives, in every dtype and variant, and the
    /// float64 reference of the norm of x + branch.
    /// </summary>
    [Test]
    public void ResidualInTheKernelEqualsTheSeparateAdd([Values(false, true)] bool gpuVariant, [Values(DType.F32, DType.BF16, DType.F16)] DType dtype,
        [Values(5, 130)] int dim)
    {
        var k = TestDevice.Variant(gpuVariant);
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        int rows = 9;
        const float eps = 1e-5f;
        var x = Ref.Random(rng, dtype, rows * dim, 2);
        var branch = Ref.Random(rng, dtype, rows * dim, 2);
        var w = Ref.Random(rng, dtype, dim);
        var dy = Ref.Random(rng, dtype, rows * dim);
        var dres = Ref.Random(rng, dtype, rows * dim);
        using var tw = Ref.Upload(dtype, w, dim);
        using var tdy = Ref.Upload(dtype, dy, rows, dim);
        using var tdres = Ref.Upload(dtype, dres, rows, dim);
        using var tx = Ref.Upload(dtype, x, rows, dim);
        (float[] H, float[] Y, float[] Rstd, float[] Dx) Run(bool fused)
        {
            using var h = Ref.Upload(dtype, branch, rows, dim);
            using var y = Ref.Poisoned(dtype, rows, dim);
            using var rstd = Ref.Poisoned(DType.F32, rows);
            using var dx = Ref.Poisoned(dtype, rows, dim);
            if (fused) RmsNormOp.Forward(k, h, tw, y, rstd, eps, residual: tx);
            else
            {
                ElementwiseOp.AddInto(k, h, tx);
                RmsNormOp.Forward(k, h, tw, y, rstd, eps);
            }
            if (fused) RmsNormOp.Backward(k, h, tw, tdy, rstd, dx, null, residualGrad: tdres);
            else
            {
                RmsNormOp.Backward(k, h, tw, tdy, rstd, dx, null);
                ElementwiseOp.AddInto(k, dx, tdres);
            }
            return (h.ToFloatArray(), y.ToFloatArray(), rstd.ToFloatArray(), dx.ToFloatArray());
        }
        var f = Run(true);
        var u = Run(false);
        string what = $"{(gpuVariant ? "gpu" : "cpu")}-variant {dtype} dim={dim} (seed {seed})";
        Assert.That(f.H, Is.EqualTo(u.H), "h = x + branch " + what);
        Assert.That(f.Y, Is.EqualTo(u.Y), "y " + what);
        Assert.That(f.Rstd, Is.EqualTo(u.Rstd), "rstd " + what);
        Assert.That(f.Dx, Is.EqualTo(u.Dx), "dx + residual gradient " + what);
        var h64 = Ref.ToDouble(f.H); // the stored sum, as the reference's input
        var (dxRef, _) = Backward(h64, Ref.ToDouble(w), Ref.ToDouble(dy), rows, dim, eps);
        Check.Close(f.Y, Forward(h64, Ref.ToDouble(w), rows, dim, eps), Ref.Tolerance(dtype, 1e-5), "fused y " + what, seed);
        Check.Close(f.Dx, dxRef.Select((v, i) => v + dres[i]).ToArray(), Ref.Tolerance(dtype, 1e-5), "fused dx " + what, seed);
    }

    [Test]
    public void BackwardReferenceMatchesFiniteDifferences()
    {
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        int rows = 2, dim = 5;
        var x = Ref.ToDouble(Check.RandomFloats(rng, rows * dim));
        var w = Ref.ToDouble(Check.RandomFloats(rng, dim));
        var dy = Ref.ToDouble(Check.RandomFloats(rng, rows * dim));
        var (dx, dw) = Backward(x, w, dy, rows, dim, 1e-5);
        var ndx = Ref.NumericGradient(xx => Ref.Dot(Forward(xx, w, rows, dim, 1e-5), dy), x);
        var ndw = Ref.NumericGradient(ww => Ref.Dot(Forward(x, ww, rows, dim, 1e-5), dy), w);
        Assert.That(Check.RelativeError(Array.ConvertAll(dx, v => (float)v), ndx), Is.LessThan(1e-6));
        Assert.That(Check.RelativeError(Array.ConvertAll(dw, v => (float)v), ndw), Is.LessThan(1e-6));
    }
}
