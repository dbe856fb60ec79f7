using NativeLora.Ops;
using NativeLora.Tensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Kernels;

public class AttentionTests
{
    /// <summary>Plain float64 attention with the full score matrix, and its backward through the softmax Jacobian.</summary>
    internal sealed class Reference
    {
        public double[] O = null!, Dq = null!, Dk = null!, Dv = null!;

        public static bool Allowed(int[] seg, int b, int T, int i, int j) =>
            j <= i && seg[b * T + i] >= 0 && seg[b * T + j] == seg[b * T + i];

        public static Reference Run(double[] q, double[] k, double[] v, int[] seg, double[]? dO, AttentionShape s)
        {
            int B = s.Batch, T = s.SeqLen, H = s.Heads, KV = s.KvHeads, hd = s.HeadDim, G = H / KV;
            double scale = 1 / Math.Sqrt(hd);
            var r = new Reference { O = new double[q.Length], Dq = new double[q.Length], Dk = new double[k.Length], Dv = new double[v.Length] };
            double Q(int b, int t, int h, int d) => q[((b * T + t) * H + h) * hd + d];
            double K(int b, int t, int g, int d) => k[((b * T + t) * KV + g) * hd + d];
            double V(int b, int t, int g, int d) => v[((b * T + t) * KV + g) * hd + d];
            for (int b = 0; b < B; b++)
                for (int h = 0; h < H; h++)
                {
                    int g = h / G;
                    var P = new double[T, T];
                    for (int i = 0; i < T; i++)
                    {
                        double max = double.NegativeInfinity;
                        var sc = new double[T];
                        for (int j = 0; j < T; j++)
                        {
                            if (!Allowed(seg, b, T, i, j)) { sc[j] = double.NegativeInfinity; continue; }
                            double dot = 0;
                            for (int d = 0; d < hd; d++) dot += Q(b, i, h, d) * K(b, j, g, d);
                            sc[j] = dot * scale;
                            max = Math.Max(max, sc[j]);
                        }
                        if (double.IsNegativeInfinity(max)) continue; // a padding query attends nothing: P row 0, output 0
                        double sum = 0;
                        for (int j = 0; j < T; j++) sum += double.IsNegativeInfinity(sc[j]) ? 0 : Math.Exp(sc[j] - max);
                        for (int j = 0; j < T; j++) P[i, j] = double.IsNegativeInfinity(sc[j]) ? 0 : Math.Exp(sc[j] - max) / sum;
                        for (int d = 0; d < hd; d++)
                        {
                            double o = 0;
                            for (int j = 0; j < T; j++) o += P[i, j] * V(b, j, g, d);
                            r.O[((b * T + i) * H + h) * hd + d] = o;
                        }
                    }
                    if (dO == null) continue;
                    double DO(int t, int d) => dO[((b * T + t) * H + h) * hd + d];
                    for (int i = 0; i < T; i++)
                    {
                        // dP_ij = dO_i·V_j; dS_ij = P_ij (dP_ij − Σ_l P_il dP_il)  (softmax Jacobian)
                        var dP = new double[T];
                        double rowDot = 0;
                        for (int j = 0; j < T; j++)
                        {
                            for (int d = 0; d < hd; d++) dP[j] += DO(i, d) * V(b, j, g, d);
                            rowDot += P[i, j] * dP[j];
                        }
                        for (int j = 0; j < T; j++)
                        {
                            double dS = P[i, j] * (dP[j] - rowDot) * scale;
                            for (int d = 0; d < hd; d++)
                            {
                                r.Dq[((b * T + i) * H + h) * hd + d] += dS * K(b, j, g, d);
                                r.Dk[((b * T + j) * KV + g) * hd + d] += dS * Q(b, i, h, d);
                                r.Dv[((b * T + j) * KV + g) * hd + d] += P[i, j] * DO(i, d);
                            }
                        }
                    }
                }
            return r;
        }
    }

    private static int[] Segments(string kind, int B, int T)
    {
        var seg = new int[B * T];
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
                seg[b * T + t] = kind switch
                {
                    "packed" => t < T / 3 ? 0 : t < T - 2 ? 1 : 2, // three packed sequences
                    "padded" => t < T - 5 ? 0 : -1,                 // five padding tokens at the end
                    _ => 0,
                };
        return seg;
    }

    private static readonly object[] Shapes =
    {
        new object[] { 2, 37, 4, 2, 64 },
        new object[] { 1, 70, 2, 1, 128 },
        new object[] { 1, 1, 1, 1, 64 },
        new object[] { 3, 9, 6, 6, 32 },
    };

    [Test, TestCaseSource(nameof(Cases))]
    public void ForwardAndBackwardMatchFloat64(bool gpuVariant, DType dtype, string mask, int B, int T, int H, int KV, int hd)
    {
        var k = TestDevice.Variant(gpuVariant);
        var s = new AttentionShape(B, T, H, KV, hd);
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        var q = Ref.Random(rng, dtype, (long)B * T * H * hd, 2);
        var kk = Ref.Random(rng, dtype, (long)B * T * KV * hd, 2);
        var v = Ref.Random(rng, dtype, (long)B * T * KV * hd);
        var dO = Ref.Random(rng, dtype, (long)B * T * H * hd);
        var seg = Segments(mask, B, T);
        using var tq = Ref.Upload(dtype, q, B * T, H * hd);
        using var tk = Ref.Upload(dtype, kk, B * T, KV * hd);
        using var tv = Ref.Upload(dtype, v, B * T, KV * hd);
        using var tdO = Ref.Upload(dtype, dO, B * T, H * hd);
        using var tseg = Ref.UploadInts(seg);
        using var to = Ref.Poisoned(dtype, B * T, H * hd);
        using var tlse = Ref.Poisoned(DType.F32, B * H * T);
        using var tdq = Ref.Poisoned(dtype, B * T, H * hd);
        using var tdk = Ref.Poisoned(dtype, B * T, KV * hd);
        using var tdv = Ref.Poisoned(dtype, B * T, KV * hd);
        AttentionOp.Forward(k, tq, tk, tv, tseg, to, tlse, s);
        AttentionOp.Backward(k, tq, tk, tv, tseg, to, tlse, tdO, tdq, tdk, tdv, s);
        var r = Reference.Run(Ref.ToDouble(q), Ref.ToDouble(kk), Ref.ToDouble(v), seg, Ref.ToDouble(dO), s);
        string what = $"attention {(gpuVariant ? "gpu" : "cpu")}-variant {dtype} {mask} {s}";
        double tol = Ref.Tolerance(dtype, 1e-4);
        Check.Close(to.ToFloatArray(), r.O, tol, what + " o", seed);
        Check.Close(tdq.ToFloatArray(), r.Dq, tol, what + " dq", seed);
        Check.Close(tdk.ToFloatArray(), r.Dk, tol, what + " dk", seed);
        Check.Close(tdv.ToFloatArray(), r.Dv, tol, what + " dv", seed);
    }

    private static IEnumerable<object[]> Cases()
    {
        foreach (var shape in Shapes)
            foreach (var mask in new[] { "causal", "packed", "padded" })
            {
                var sh = (object[])shape;
                yield return new object[] { false, DType.F32, mask, sh[0], sh[1], sh[2], sh[3], sh[4] };
                yield return new object[] { true, DType.F32, mask, sh[0], sh[1], sh[2], sh[3], sh[4] };
                yield return new object[] { true, DType.BF16, mask, sh[0], sh[1], sh[2], sh[3], sh[4] };
            }
    }

    [Test]
    public void ReferenceBackwardMatchesFiniteDifferences()
    {
        var rng = new Random(Check.FreshSeed());
        var s = new AttentionShape(1, 5, 2, 1, 4);
        int nq = 5 * 2 * 4, nk = 5 * 1 * 4;
        var q = Ref.ToDouble(Check.RandomFloats(rng, nq));
        var k = Ref.ToDouble(Check.RandomFloats(rng, nk));
        var v = Ref.ToDouble(Check.RandomFloats(rng, nk));
        var dO = Ref.ToDouble(Check.RandomFloats(rng, nq));
        var seg = new[] { 0, 0, 1, 1, 1 };
        var r = Reference.Run(q, k, v, seg, dO, s);
        double Loss(double[] qq, double[] kk, double[] vv) => Ref.Dot(Reference.Run(qq, kk, vv, seg, null, s).O, dO);
        Assert.That(Check.RelativeError(Array.ConvertAll(r.Dq, x => (float)x), Ref.NumericGradient(x => Loss(x, k, v), q)), Is.LessThan(1e-6));
        Assert.That(Check.RelativeError(Array.ConvertAll(r.Dk, x => (float)x), Ref.NumericGradient(x => Loss(q, x, v), k)), Is.LessThan(1e-6));
        Assert.That(Check.RelativeError(Array.ConvertAll(r.Dv, x => (float)x), Ref.NumericGradient(x => Loss(q, k, x), v)), Is.LessThan(1e-6));
    }
}
