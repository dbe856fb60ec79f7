using NativeLora.Kernels;
using NativeLora.Ops;
using NativeLora.Tensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Kernels;

public class CrossEntropyTests
{
    private static (double loss, double[] dh, double[] dw) Reference(double[] h, double[] w, int[] labels, int n, int d, int vocab) =>
        CrossEntropy.Reference.Run(h, w, labels, n, d, vocab);

    [Test]
    public void ChunkedLossAndGradientsMatchFloat64([Values(false, true)] bool gpuVariant, [Values(DType.F32, DType.BF16)] DType dtype,
        [Values(1, 5, 64)] int chunkRows)
    {
        var k = TestDevice.Variant(gpuVariant);
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        int n = 23, d = 32, vocab = 301;
        var h = Ref.Random(rng, dtype, n * d, 3);
        var w = Ref.Random(rng, dtype, vocab * d, 1);
        var labels = Enumerable.Range(0, n).Select(i => i % 4 == 0 ? -100 : rng.Next(vocab)).ToArray();
        using var th = Ref.Upload(dtype, h, n, d);
        using var tw = Ref.Upload(dtype, w, vocab, d);
        using var tdh = Ref.Poisoned(dtype, n, d);
        using var tdw = TestDevice.Shared.Allocate(dtype, vocab, d);
        ElementwiseOp.Zero(k, tdw);
        var (loss, count) = CrossEntropyOp.ForwardBackward(k, th, tw, labels, tdh, tdw, chunkRows);
        var r = Reference(Ref.ToDouble(h), Ref.ToDouble(w), labels, n, d, vocab);
        string what = $"cross-entropy {(gpuVariant ? "gpu" : "cpu")}-variant {dtype} chunk={chunkRows}";
        Assert.That(count, Is.EqualTo(labels.Count(y => y != -100)));
        Assert.That(Math.Abs(loss - r.loss) / r.loss, Is.LessThan(dtype == DType.F32 ? 1e-5 : 1e-2), $"{what} loss {loss} vs {r.loss}, seed {seed}");
        double tol = Ref.Tolerance(dtype, 1e-5);
        Check.Close(tdh.ToFloatArray(), r.dh, tol, what + " dh", seed);
        Check.Close(tdw.ToFloatArray(), r.dw, tol, what + " dw", seed);
    }

    [Test]
    public void ReferenceGradientsMatchFiniteDifferences()
    {
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        int n = 3, d = 4, vocab = 5;
        var h = Ref.ToDouble(Check.RandomFloats(rng, n * d));
        var w = Ref.ToDouble(Check.RandomFloats(rng, vocab * d));
        var labels = new[] { 2, -100, 4 };
        var r = Reference(h, w, labels, n, d, vocab);
        Assert.That(Check.RelativeError(Array.ConvertAll(r.dh, v => (float)v), Ref.NumericGradient(x => Reference(x, w, labels, n, d, vocab).loss, h)), Is.LessThan(1e-6));
        Assert.That(Check.RelativeError(Array.ConvertAll(r.dw, v => (float)v), Ref.NumericGradient(x => Reference(h, x, labels, n, d, vocab).loss, w)), Is.LessThan(1e-6));
    }

    [Test]
    public void HugeLogitsStayFinite()
    {
        var k = TestDevice.Shared.Kernels;
        using var th = Ref.Upload(DType.F32, new[] { 1000f, -1000f }, 1, 2);
        using var tw = Ref.Upload(DType.F32, new[] { 1f, 0f, 0f, 1f, -1f, 0f }, 3, 2);
        using var tdh = Ref.Poisoned(DType.F32, 1, 2);
        var (loss, _) = CrossEntropyOp.ForwardBackward(k, th, tw, new[] { 2 }, tdh, null);
        Assert.That(loss, Is.EqualTo(2000).Within(1e-3)); // lse ≈ 1000, logit[2] = −1000
        Assert.That(tdh.ToFloatArray(), Is.All.Not.NaN);
    }

    [Test]
    public void BadLabelsAreRejected()
    {
        var k = TestDevice.Shared.Kernels;
        using var th = TestDevice.Shared.Allocate(DType.F32, 2, 2);
        using var tw = TestDevice.Shared.Allocate(DType.F32, 3, 2);
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => CrossEntropyOp.ForwardBackward(k, th, tw, new[] { 0, 3 }, null, null))!.Message,
            Does.Contain("label 3 at row 1"));
        Assert.That(Assert.Throws<ArgumentException>(() => CrossEntropyOp.ForwardBackward(k, th, tw, new[] { -100, -100 }, null, null))!.Message,
            Does.Contain("every label is -100"));
    }
}
