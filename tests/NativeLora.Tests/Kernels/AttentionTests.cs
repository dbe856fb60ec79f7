using NativeLora.Ops;
using NativeLora.Tensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Kernels;

public class AttentionTests
{
    private static NativeLora.Kernels.Attention.Reference Run(double[] q, double[] k, double[] v, int[] seg, double[]? dO, AttentionShape s) =>
        NativeLora.Kernels.Attention.Reference.Run(q, k, v, seg, dO, s.Batch, s.SeqLen, s.Keys, s.Heads, s.KvHeads, s.HeadDim);

    // segments of the keys [B·Tk]
    private static int[] Segments(string kind, int B, int T)
    {
        var seg = new int[B * T];
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
                seg[b * T + t] = kind switch
                {
                    "packed" => t < T / 3 ? 0 : t < T - 2 ? 1 : 2, // three packed sequences
                    "padded" => t < T - 5 ? 0 : -1,                 // five padding tokens at the end
                    "left-padded" => t < 3 ? -1 : 0,                // three padding tokens in front (a batch of prompts after a cache)
                    _ => 0,
                };
        return seg;
    }

    // (B, T, H, KV, hd, KeyLen, blockRows): GQA 2:1 and 4:1, MHA, one token, keys before the queries,
    // and block sizes that split the rows into uneven blocks (and split the packed segments)
    private static readonly object[] Shapes =
    {
        new object[] { 2, 37, 4, 2, 64, 0, 0 },
        new object[] { 2, 37, 4, 2, 64, 0, 16 },
        new object[] { 1, 70, 8, 2, 32, 0, 13 },
        new object[] { 1, 1, 1, 1, 64, 0, 0 },
        new object[] { 3, 9, 6, 6, 32, 0, 4 },
        new object[] { 2, 11, 4, 1, 16, 29, 0 },
        new object[] { 2, 11, 4, 1, 16, 29, 5 },
    };

    [Test, TestCaseSource(nameof(Cases))]
    public void ForwardAndBackwardMatchFloat64(bool gpuVariant, DType dtype, string mask, int B, int T, int H, int KV, int hd, int keyLen, int blockRows)
    {
        var k = TestDevice.Variant(gpuVariant);
        var s = new AttentionShape(B, T, H, KV, hd, keyLen);
        int Tk = s.Keys;
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        var q = Ref.Random(rng, dtype, (long)B * T * H * hd, 2);
        var kk = Ref.Random(rng, dtype, (long)B * Tk * KV * hd, 2);
        var v = Ref.Random(rng, dtype, (long)B * Tk * KV * hd);
        var dO = Ref.Random(rng, dtype, (long)B * T * H * hd);
        var seg = Segments(mask, B, Tk);
        using var tq = Ref.Upload(dtype, q, B * T, H * hd);
        using var tk = Ref.Upload(dtype, kk, B * Tk, KV * hd);
        using var tv = Ref.Upload(dtype, v, B * Tk, KV * hd);
        using var tdO = Ref.Upload(dtype, dO, B * T, H * hd);
        using var tseg = Ref.UploadInts(seg);
        using var to = Ref.Poisoned(dtype, B * T, H * hd);
        using var tlse = Ref.Poisoned(DType.F32, B * H * T);
        using var tdq = Ref.Poisoned(dtype, B * T, H * hd);
        using var tdk = Ref.Poisoned(dtype, B * Tk, KV * hd);
        using var tdv = Ref.Poisoned(dtype, B * Tk, KV * hd);
        AttentionOp.Forward(k, tq, tk, tv, tseg, to, tlse, s, blockRows);
        AttentionOp.Backward(k, tq, tk, tv, tseg, to, tlse, tdO, tdq, tdk, tdv, s, blockRows);
        var r = Run(Ref.ToDouble(q), Ref.ToDouble(kk), Ref.ToDouble(v), seg, Ref.ToDouble(dO), s);
        string what = $"attention {(gpuVariant ? "gpu" : "cpu")}-variant {dtype} {mask} {s} blockRows {blockRows}";
        double tol = Ref.Tolerance(dtype, 1e-4);
        Check.Close(to.ToFloatArray(), r.O, tol, what + " o", seed);
        // lse per element, absolute: a single query's lse is its one score, which can cancel to ~0 (a relative bound fails there)
        var lse = tlse.ToFloatArray();
        for (int i = 0; i < lse.Length; i++)
            Assert.That(lse[i], Is.EqualTo(r.Lse[i]).Within(1e-4 * (1 + Math.Abs(r.Lse[i]))), $"{what} lse[{i}]; NATIVELORA_SEED={seed}");
        Check.Close(tdq.ToFloatArray(), r.Dq, tol, what + " dq", seed);
        Check.Close(tdk.ToFloatArray(), r.Dk, tol, what + " dk", seed);
        Check.Close(tdv.ToFloatArray(), r.Dv, tol, what + " dv", seed);
    }

    /// <summary>
    /// The GPU row kernels take rows of at most 1024 keys one per warp and longer ones one per group: a sequence of
    /// 1,040 tokens in blocks of 600 queries runs the first block per warp (keys up to 600) and the second per group
    /// (keys up to 1,040), packed, in both dtypes.
    /// </summary>
    [TestCase(DType.F32)]
    [TestCase(DType.BF16)]
    public void RowsPerWarpAndPerGroupInOneCall(DType dtype) =>
        ForwardAndBackwardMatchFloat64(true, dtype, "packed", 1, NativeLora.Kernels.Attention.WarpRowMaxWidth + 16, 2, 1, 8, 0, 600);

    private static IEnumerable<object[]> Cases()
    {
        foreach (object[] sh in Shapes)
            foreach (var mask in (int)sh[5] > 0 ? new[] { "causal", "packed", "left-padded" } : new[] { "causal", "packed", "padded" })
            {
                object[] Case(bool gpu, DType dt) => new object[] { gpu, dt, mask }.Concat(sh).ToArray();
                yield return Case(false, DType.F32);
                yield return Case(true, DType.F32);
                yield return Case(true, DType.BF16);
                yield return Case(false, DType.F16);
            }
    }

    [Test]
    public void BlockRowsFollowTheScratchBudget()
    {
        var s = new AttentionShape(4, 512, 32, 8, 64);
        // a query row of scores over all heads and batch rows: 4·32·512 values of f32 + bf16 = 393,216 bytes
        Assert.That(AttentionOp.BlockRows(s, DType.BF16, 1L << 30), Is.EqualTo(512), "the whole sequence fits in 1 GiB");
        Assert.That(AttentionOp.BlockRows(s, DType.BF16, 100L << 20), Is.EqualTo(256), "266 rows fit in 100 MiB: 256, a multiple of 64");
        Assert.That(AttentionOp.BlockRows(s, DType.BF16, 10L << 20), Is.EqualTo(26), "26 rows fit in 10 MiB");
        Assert.That(AttentionOp.BlockRows(s, DType.BF16, 1000), Is.EqualTo(1), "at least one row");
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
        var r = Run(q, k, v, seg, dO, s);
        double Loss(double[] qq, double[] kk, double[] vv) => Ref.Dot(Run(qq, kk, vv, seg, null, s).O, dO);
        Assert.That(Check.RelativeError(Array.ConvertAll(r.Dq, x => (float)x), Ref.NumericGradient(x => Loss(x, k, v), q)), Is.LessThan(1e-6));
        Assert.That(Check.RelativeError(Array.ConvertAll(r.Dk, x => (float)x), Ref.NumericGradient(x => Loss(q, x, v), k)), Is.LessThan(1e-6));
        Assert.That(Check.RelativeError(Array.ConvertAll(r.Dv, x => (float)x), Ref.NumericGradient(x => Loss(q, k, x), v)), Is.LessThan(1e-6));
    }
}
