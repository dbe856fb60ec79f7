using NativeLora.Tensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Tensors;

/// <summary>The GEMM entry point against a plain float64 reference, every transpose and dtype, odd sizes included.</summary>
public class GemmTests
{
    private static readonly int[][] Sizes =
    {
        new[] { 1, 1, 1 }, new[] { 7, 33, 1 }, new[] { 33, 7, 257 }, new[] { 257, 33, 7 },
        new[] { 1, 257, 33 }, new[] { 33, 1, 7 }, new[] { 257, 257, 257 },
    };

    private static double Tolerance(DType t) => t switch { DType.F32 => 1e-5, _ => 1e-2 };

    private static double[] Reference(float[] a, float[] b, float[] c0, int m, int n, int k, bool ta, bool tb, double alpha, double beta, DType t)
    {
        var r = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double s = 0;
                for (int p = 0; p < k; p++)
                {
                    double av = t.Round(ta ? a[p * m + i] : a[i * k + p]);
                    double bv = t.Round(tb ? b[j * k + p] : b[p * n + j]);
                    s += av * bv;
                }
                r[i * n + j] = alpha * s + beta * t.Round(c0[i * n + j]);
            }
        return r;
    }

    [Test]
    public void MatchesFloat64Reference([Values(DType.F32, DType.BF16, DType.F16)] DType dtype,
        [Values(false, true)] bool transA, [Values(false, true)] bool transB)
    {
        var device = TestDevice.Shared;
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        foreach (var s in Sizes)
        {
            int m = s[0], n = s[1], k = s[2];
            foreach (var (alpha, beta) in new[] { (1f, 0f), (0.5f, -1.25f) })
            {
                var a = Check.RandomFloats(rng, m * k);
                var b = Check.RandomFloats(rng, k * n);
                var c0 = Check.RandomFloats(rng, m * n);
                using var ta = device.Allocate(dtype, transA ? new[] { k, m } : new[] { m, k });
                using var tb = device.Allocate(dtype, transB ? new[] { n, k } : new[] { k, n });
                using var tc = device.Allocate(dtype, m, n);
                ta.CopyFromFloats(a);
                tb.CopyFromFloats(b);
                if (beta == 0) tc.Poison(); // beta = 0 must overwrite, NaN included
                else tc.CopyFromFloats(c0);
                Gemm.Run(ta, tb, tc, transA, transB, alpha, beta);
                var expected = Reference(a, b, c0, m, n, k, transA, transB, alpha, beta, dtype);
                Check.Close(tc.ToFloatArray(), expected, Tolerance(dtype),
                    $"{dtype} m={m} n={n} k={k} transA={transA} transB={transB} alpha={alpha} beta={beta}", seed);
            }
        }
    }

    [Test]
    public void BatchedMatchesPerMatrixReference([Values(DType.F32, DType.BF16)] DType dtype, [Values(false, true)] bool sharedB,
        [Values(false, true)] bool transB)
    {
        var device = TestDevice.Shared;
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        const int batch = 5, m = 7, n = 33, k = 17;
        var a = Check.RandomFloats(rng, batch * m * k);
        var b = Check.RandomFloats(rng, (sharedB ? 1 : batch) * k * n);
        using var ta = device.Allocate(dtype, batch, m, k);
        int[] bShape = transB ? new[] { n, k } : new[] { k, n };
        using var tb = device.Allocate(dtype, sharedB ? bShape : new[] { batch, bShape[0], bShape[1] });
        using var tc = device.Allocate(dtype, batch, m, n);
        ta.CopyFromFloats(a);
        tb.CopyFromFloats(b);
        tc.Poison();
        // contiguous batches: matrix i at i·rows·cols, and a shared B with batch stride 0
        GemmStrided.Run(new StridedMatrices(ta, 0, m, k, k, m * k), new StridedMatrices(tb, 0, bShape[0], bShape[1], bShape[1], sharedB ? 0 : k * n),
            new StridedMatrices(tc, 0, m, n, n, m * n), batch, transB: transB);
        var expected = new double[batch * m * n];
        for (int i = 0; i < batch; i++)
        {
            var ai = a.AsSpan(i * m * k, m * k).ToArray();
            var bi = sharedB ? b : b.AsSpan(i * k * n, k * n).ToArray();
            Reference(ai, bi, new float[m * n], m, n, k, false, transB, 1, 0, dtype).CopyTo(expected, i * m * n);
        }
        Check.Close(tc.ToFloatArray(), expected, Tolerance(dtype), $"batched {dtype} sharedB={sharedB} transB={transB}", seed);
    }

    [Test]
    public void HalfPrecisionOperandsWithF32ResultAreNotRounded([Values(DType.BF16, DType.F16)] DType dtype, [Values(false, true)] bool transB)
    {
        var device = TestDevice.Shared;
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        int m = 33, n = 257, k = 7;
        var a = Check.RandomFloats(rng, m * k);
        var b = Check.RandomFloats(rng, k * n);
        var c0 = Check.RandomFloats(rng, m * n);
        using var ta = device.Allocate(dtype, m, k);
        using var tb = device.Allocate(dtype, transB ? new[] { n, k } : new[] { k, n });
        using var tc = device.Allocate(DType.F32, m, n);
        ta.CopyFromFloats(a);
        var bStored = transB ? Transpose(b, k, n) : b;
        tb.CopyFromFloats(bStored);
        tc.CopyFrom<float>(c0);
        Gemm.Run(ta, tb, tc, transB: transB, alpha: 1f, beta: 0.5f);
        var expected = Reference(a, bStored, c0, m, n, k, false, transB, 1, 0.5, dtype);
        for (int i = 0; i < expected.Length; i++) // C was f32: beta·C uses the unrounded value
            expected[i] += 0.5 * (c0[i] - dtype.Round(c0[i]));
        Check.Close(tc.ToArray<float>(), expected, 1e-5, $"{dtype}→f32 transB={transB}", seed);
    }

    private static float[] Transpose(float[] x, int rows, int cols)
    {
        var t = new float[x.Length];
        for (int r = 0; r < rows; r++) for (int c = 0; c < cols; c++) t[c * rows + r] = x[r * cols + c];
        return t;
    }

    [Test]
    public void ZeroInnerDimensionScalesC()
    {
        var device = TestDevice.Shared;
        using var a = device.Allocate(DType.F32, 3, 0);
        using var b = device.Allocate(DType.F32, 0, 4);
        using var c = device.Allocate(DType.F32, 3, 4);
        c.CopyFrom<float>(Enumerable.Repeat(2f, 12).ToArray());
        Gemm.Run(a, b, c, alpha: 1, beta: 0.5f);
        Assert.That(c.ToArray<float>(), Is.All.EqualTo(1f));
        c.Poison();
        Gemm.Run(a, b, c, alpha: 1, beta: 0f);
        Assert.That(c.ToArray<float>(), Is.All.EqualTo(0f));
    }

    [Test]
    public void ShapeMismatchesAreRejectedWithTheShapes()
    {
        var device = TestDevice.Shared;
        using var a = device.Allocate(DType.F32, 3, 5);
        using var b = device.Allocate(DType.F32, 4, 2);
        using var c = device.Allocate(DType.F32, 3, 2);
        var e = Assert.Throws<ArgumentException>(() => Gemm.Run(a, b, c));
        Assert.That(e!.Message, Does.Contain("inner dimensions"));
        using var h = device.Allocate(DType.BF16, 5, 2);
        e = Assert.Throws<ArgumentException>(() => Gemm.Run(a, h, c));
        Assert.That(e!.Message, Does.Contain("one dtype"));
    }
}
