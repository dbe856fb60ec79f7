using NativeLora.Ops;
using NativeLora.Tensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Kernels;

public class ElementwiseTests
{
    [Test]
    public void FillWritesEveryElement([Values(false, true)] bool gpuVariant, [Values(DType.F32, DType.BF16, DType.F16)] DType dtype, [Values(1, 1029)] int n)
    {
        var k = TestDevice.Variant(gpuVariant);
        using var t = Ref.Poisoned(dtype, n);
        ElementwiseOp.Fill(k, t, -0.375f);
        Assert.That(t.ToFloatArray(), Is.All.EqualTo(-0.375f));
    }

    [Test]
    public void ZeroClearsExactlyItsViewAfterTheKernelsBeforeIt([Values(DType.F32, DType.BF16, DType.F16)] DType dtype, [Values(false, true)] bool gpuVariant)
    {
        var k = TestDevice.Variant(gpuVariant);
        int seed = Check.FreshSeed();
        var data = Ref.Random(new Random(seed), dtype, 40 * 33);
        using var a = Ref.Upload(dtype, data, 40, 33);
        using var t = Ref.Poisoned(dtype, 40, 33);
        ElementwiseOp.Add(k, a, a, t); // a queued kernel writes every row; Zero must come after it
        ElementwiseOp.Zero(k, t.Slice(10, 20));
        var got = t.ToFloatArray();
        for (int i = 0; i < got.Length; i++)
        {
            int row = i / 33;
            float expected = row is >= 10 and < 30 ? 0f : dtype.Round(2 * data[i]);
            Assert.That(got[i], Is.EqualTo(expected), $"element {i} (row {row}); seed {seed}");
        }
    }

    /// <summary>KV-cache rows: Write scatters rows to the named cache rows and leaves the others alone; Read gathers them back.</summary>
    [Test]
    public void KvCacheWriteScattersAndReadGathersRows([Values(DType.F32, DType.BF16)] DType dtype, [Values(false, true)] bool gpuVariant)
    {
        var k = TestDevice.Variant(gpuVariant);
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        const int cacheRows = 24, width = 19, n = 9;
        var rows = Enumerable.Range(0, cacheRows).OrderBy(_ => rng.Next()).Take(n).ToArray();
        var before = Ref.Random(rng, dtype, cacheRows * width);
        var src = Ref.Random(rng, dtype, n * width);
        using var cache = Ref.Upload(dtype, before, cacheRows, width);
        using var s = Ref.Upload(dtype, src, n, width);
        using var r = Ref.UploadInts(rows);
        using var back = Ref.Poisoned(dtype, n, width);
        KvCacheOp.Write(k, s, cache, r);
        KvCacheOp.Read(k, cache, r, back);
        var expected = (float[])before.Clone();
        for (int i = 0; i < n; i++) Array.Copy(src, i * width, expected, rows[i] * width, width);
        Assert.That(cache.ToFloatArray(), Is.EqualTo(expected), $"cache after the write; seed {seed}");
        Assert.That(back.ToFloatArray(), Is.EqualTo(src), $"rows read back; seed {seed}");
    }

    [Test]
    public void FillUniformDrawsTheHostsValuesWithTheRightScale([Values(false, true)] bool gpuVariant, [Values(DType.F32, DType.BF16)] DType dtype)
    {
        int seed = Check.FreshSeed();
        const int n = 50_000;
        const float bound = 0.5f;
        using var t = Ref.Poisoned(dtype, n);
        ElementwiseOp.FillUniform(TestDevice.Variant(gpuVariant), t, (ulong)seed, bound);
        var got = t.ToFloatArray();
        double sum = 0, sq = 0;
        for (int i = 0; i < n; i++)
        {
            float expected = dtype.Round((2f * NativeLora.Kernels.Elementwise.Uniform01((ulong)seed, i) - 1f) * bound);
            Assert.That(got[i], Is.EqualTo(expected), $"element {i}; seed {seed}");
            sum += got[i];
            sq += (double)got[i] * got[i];
        }
        // uniform(−b, b): mean 0 (sd of the mean b/√(3n) ≈ 0.0013), variance b²/3 ≈ 0.0833
        Assert.That(sum / n, Is.EqualTo(0).Within(0.007), $"mean; seed {seed}");
        Assert.That(sq / n, Is.EqualTo(bound * bound / 3).Within(0.003), $"variance; seed {seed}");
    }

    [Test]
    public void ResidualAddAndAccumulate([Values(false, true)] bool gpuVariant, [Values(DType.F32, DType.BF16, DType.F16)] DType dtype)
    {
        var k = TestDevice.Variant(gpuVariant);
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        int n = 1029;
        var a = Ref.Random(rng, dtype, n);
        var b = Ref.Random(rng, dtype, n);
        using var ta = Ref.Upload(dtype, a, n);
        using var tb = Ref.Upload(dtype, b, n);
        using var tc = Ref.Poisoned(dtype, n);
        ElementwiseOp.Add(k, ta, tb, tc);
        var sum = a.Zip(b, (x, y) => (double)x + y).ToArray();
        Check.Close(tc.ToFloatArray(), sum, Ref.Tolerance(dtype, 1e-7), $"add {dtype}", seed);
        ElementwiseOp.AddInto(k, ta, tb);
        Check.Close(ta.ToFloatArray(), sum, Ref.Tolerance(dtype, 1e-7), $"add-into {dtype}", seed);
    }

    [Test]
    public void CastsRoundTripThroughEveryPair([Values(false, true)] bool gpuVariant, [Values(DType.F32, DType.BF16, DType.F16)] DType from, [Values(DType.F32, DType.BF16, DType.F16)] DType to)
    {
        var k = TestDevice.Variant(gpuVariant);
        int seed = Check.FreshSeed();
        var x = Ref.Random(new Random(seed), from, 517, 100);
        using var src = Ref.Upload(from, x, x.Length);
        using var dst = Ref.Poisoned(to, x.Length);
        ElementwiseOp.Cast(k, src, dst);
        var expected = x.Select(v => to.Round(v)).ToArray();
        Assert.That(dst.ToFloatArray(), Is.EqualTo(expected), $"{from}->{to} seed {seed}");
    }
}

public class BiasTests
{
    [Test]
    public void AddBiasAndColumnSumGradient([Values(false, true)] bool gpuVariant, [Values(DType.F32, DType.BF16)] DType dtype, [Values(1, 13)] int rows, [Values(1, 96)] int cols)
    {
        var k = TestDevice.Variant(gpuVariant);
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        var y = Ref.Random(rng, dtype, rows * cols);
        var b = Ref.Random(rng, dtype, cols);
        using var ty = Ref.Upload(dtype, y, rows, cols);
        using var tb = Ref.Upload(dtype, b, cols);
        using var tdb = TestDevice.Shared.Allocate(DType.F32, cols);
        ElementwiseOp.Zero(k, tdb);
        ElementwiseOp.AddBias(k, ty, tb);
        ElementwiseOp.BiasGrad(k, ty, tdb);
        var yRef = new double[rows * cols];
        var dbRef = new double[cols];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) { yRef[r * cols + c] = (double)y[r * cols + c] + b[c]; }
        var yOut = ty.ToFloatArray();
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) dbRef[c] += yOut[r * cols + c];
        Check.Close(yOut, yRef, Ref.Tolerance(dtype, 1e-7), $"bias add {dtype}", seed);
        Check.Close(tdb.ToFloatArray(), dbRef, 1e-6, $"bias grad {dtype}", seed);
    }
}
