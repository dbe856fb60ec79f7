using NativeLora.Kernels;
using NativeLora.Ops;
using NativeLora.Tensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Kernels;

public class RopeTests
{
    private static double[] Reference(double[] x, int[] pos, int tokens, int heads, int hd, double[] invFreq, bool inverse) =>
        Rope.Reference.Rotate(x, pos, tokens, heads, hd, invFreq, inverse);

    [Test]
    public void ForwardAndBackwardMatchFloat64([Values(false, true)] bool gpuVariant, [Values(DType.F32, DType.BF16)] DType dtype, [Values(64, 128)] int hd,
        [Values("none", "linear", "llama3")] string scaling)
    {
        var k = TestDevice.Variant(gpuVariant);
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        int tokens = 13, heads = 3, maxPos = 40;
        var sc = scaling switch
        {
            "linear" => new RopeScaling(RopeScalingType.Linear, Factor: 4),
            "llama3" => new RopeScaling(RopeScalingType.Llama3, Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositions: 16),
            _ => RopeScaling.None,
        };
        // packed positions: two sequences restart at 0, plus large positions
        var pos = new[] { 0, 1, 2, 3, 4, 0, 1, 2, 37, 38, 39, 5, 6 };
        var x = Ref.Random(rng, dtype, tokens * heads * hd);
        var (cos, sin) = Rope.BuildTable(hd, maxPos, 500000, sc);
        using var tcos = Ref.Upload(DType.F32, cos, maxPos, hd / 2);
        using var tsin = Ref.Upload(DType.F32, sin, maxPos, hd / 2);
        using var tpos = Ref.UploadInts(pos);
        using var tx = Ref.Upload(dtype, x, tokens, heads * hd);
        using var ty = Ref.Poisoned(dtype, tokens, heads * hd);
        using var tdx = Ref.Poisoned(dtype, tokens, heads * hd);
        RopeOp.Forward(k, new(tx, ty, heads), null, tpos, tcos, tsin, hd);
        RopeOp.Backward(k, new(tx, tdx, heads), null, tpos, tcos, tsin, hd); // dy = x
        // a layer's q and k in one call: q in place (y may be x itself), k (2 heads) into another tensor, and back
        int kvHeads = 2;
        var x2 = Ref.Random(rng, dtype, tokens * kvHeads * hd);
        using var inPlace = Ref.Upload(dtype, x, tokens, heads * hd);
        using var tx2 = Ref.Upload(dtype, x2, tokens, kvHeads * hd);
        using var ty2 = Ref.Poisoned(dtype, tokens, kvHeads * hd);
        RopeOp.Forward(k, new(inPlace, inPlace, heads), new(tx2, ty2, kvHeads), tpos, tcos, tsin, hd);
        using var tdx2 = Ref.Poisoned(dtype, tokens, kvHeads * hd);
        using var tdxPair = Ref.Poisoned(dtype, tokens, heads * hd);
        RopeOp.Backward(k, new(tx, tdxPair, heads), new(tx2, tdx2, kvHeads), tpos, tcos, tsin, hd);

        var inv = ReferenceInverseFrequencies(hd, 500000, sc);
        double tol = Ref.Tolerance(dtype, 1e-5);
        string what = $"rope {(gpuVariant ? "gpu" : "cpu")}-variant {dtype} hd={hd} {scaling}";
        Check.Close(ty.ToFloatArray(), Reference(Ref.ToDouble(x), pos, tokens, heads, hd, inv, false), tol, what, seed);
        Check.Close(inPlace.ToFloatArray(), Reference(Ref.ToDouble(x), pos, tokens, heads, hd, inv, false), tol, what + " q in place, with k", seed);
        Check.Close(ty2.ToFloatArray(), Reference(Ref.ToDouble(x2), pos, tokens, kvHeads, hd, inv, false), tol, what + " k, with q", seed);
        Check.Close(tdxPair.ToFloatArray(), Reference(Ref.ToDouble(x), pos, tokens, heads, hd, inv, true), tol, what + " backward q, with k", seed);
        Check.Close(tdx2.ToFloatArray(), Reference(Ref.ToDouble(x2), pos, tokens, kvHeads, hd, inv, true), tol, what + " backward k, with q", seed);
        // the transpose of a rotation is the rotation by −angle
        Check.Close(tdx.ToFloatArray(), Reference(Ref.ToDouble(x), pos, tokens, heads, hd, inv, true), tol, what + " backward", seed);
    }

    // Independent transcription of transformers' _compute_llama3_parameters / linear scaling.
    private static double[] ReferenceInverseFrequencies(int hd, double theta, RopeScaling s)
    {
        var inv = Enumerable.Range(0, hd / 2).Select(p => 1.0 / Math.Pow(theta, (2.0 * p) / hd)).ToArray();
        if (s.Type == RopeScalingType.Linear) return inv.Select(f => f / s.Factor).ToArray();
        if (s.Type != RopeScalingType.Llama3) return inv;
        double lowWl = s.OriginalMaxPositions / s.LowFreqFactor, highWl = s.OriginalMaxPositions / s.HighFreqFactor;
        return inv.Select(f =>
        {
            double wl = 2 * Math.PI / f;
            double scaled = wl > lowWl ? f / s.Factor : f;
            double smooth = (s.OriginalMaxPositions / wl - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
            bool medium = !(wl < highWl) && !(wl > lowWl);
            return medium ? (1 - smooth) * scaled / s.Factor + smooth * scaled : scaled;
        }).ToArray();
    }

    [Test]
    public void BackwardIsTheGradientOfTheForward()
    {
        // the backward reference (rotation by −angle) against central differences of the forward
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        int tokens = 3, heads = 2, hd = 4;
        var pos = new[] { 0, 5, 2 };
        var inv = ReferenceInverseFrequencies(hd, 10000, RopeScaling.None);
        var x = Ref.ToDouble(Check.RandomFloats(rng, tokens * heads * hd));
        var dy = Ref.ToDouble(Check.RandomFloats(rng, tokens * heads * hd));
        var analytic = Reference(dy, pos, tokens, heads, hd, inv, inverse: true);
        var numeric = Ref.NumericGradient(v => Ref.Dot(Reference(v, pos, tokens, heads, hd, inv, inverse: false), dy), x);
        Assert.That(Check.RelativeError(Array.ConvertAll(analytic, v => (float)v), numeric), Is.LessThan(1e-6));
    }

    [Test]
    public void Llama3ScalingLeavesHighFrequenciesAndDividesLowOnes()
    {
        var inv = Rope.InverseFrequencies(128, 500000, new RopeScaling(RopeScalingType.Llama3, 8, 1, 4, 8192));
        var plain = Rope.InverseFrequencies(128, 500000, RopeScaling.None);
        Assert.That(inv[0], Is.EqualTo(plain[0]));                       // wavelength 2π < 2048
        Assert.That(inv[63], Is.EqualTo(plain[63] / 8).Within(1e-18));   // wavelength far above 8192
    }
}
