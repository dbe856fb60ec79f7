using NativeLora.Ops;
using NativeLora.Tensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Kernels;

/// <summary>
/// The CPU variant's two paths for a row's allowed keys (Kernels/AttentionCpu.cs): one SIMD range when the
/// query's segment is a single run of positions, a masked scalar loop when the same id comes back after
/// another segment. AttentionTests covers runs; this covers ids that come back, against the same float64 reference.
/// </summary>
public class AttentionCpuTests
{
    [Test]
    public void SegmentIdsThatComeBackAreMaskedLikeTheReference([Values(DType.F32, DType.BF16)] DType dtype, [Values(0, 5)] int blockRows)
    {
        var k = TestDevice.Variant(false);
        var s = new AttentionShape(2, 14, 4, 2, 16);
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        // row 0: id 0, then 1, then 0 again, padding, 1 again; row 1: padding inside a run of 2
        var seg = new[] { 0, 0, 0, 1, 1, 0, 0, -1, 1, 1, 1, 0, 0, 0,
                          2, 2, -1, 2, 2, 3, 3, 3, 3, 2, 2, 3, 3, 3 };
        var q = Ref.Random(rng, dtype, (long)s.Tokens * s.Heads * s.HeadDim, 2);
        var kk = Ref.Random(rng, dtype, (long)s.Batch * s.Keys * s.KvHeads * s.HeadDim, 2);
        var v = Ref.Random(rng, dtype, kk.Length);
        var dO = Ref.Random(rng, dtype, q.Length);
        using var tq = Ref.Upload(dtype, q, s.Tokens, s.Heads * s.HeadDim);
        using var tk = Ref.Upload(dtype, kk, s.Tokens, s.KvHeads * s.HeadDim);
        using var tv = Ref.Upload(dtype, v, s.Tokens, s.KvHeads * s.HeadDim);
        using var tdO = Ref.Upload(dtype, dO, s.Tokens, s.Heads * s.HeadDim);
        using var tseg = Ref.UploadInts(seg);
        using var to = Ref.Poisoned(dtype, s.Tokens, s.Heads * s.HeadDim);
        using var tlse = Ref.Poisoned(DType.F32, s.Batch * s.Heads * s.SeqLen);
        using var tdq = Ref.Poisoned(dtype, s.Tokens, s.Heads * s.HeadDim);
        using var tdk = Ref.Poisoned(dtype, s.Tokens, s.KvHeads * s.HeadDim);
        using var tdv = Ref.Poisoned(dtype, s.Tokens, s.KvHeads * s.HeadDim);
        AttentionOp.Forward(k, tq, tk, tv, tseg, to, tlse, s, blockRows);
        AttentionOp.Backward(k, tq, tk, tv, tseg, to, tlse, tdO, tdq, tdk, tdv, s, blockRows);
        var r = NativeLora.Kernels.Attention.Reference.Run(Ref.ToDouble(q), Ref.ToDouble(kk), Ref.ToDouble(v), seg, Ref.ToDouble(dO), s.Batch, s.SeqLen, s.Keys, s.Heads, s.KvHeads, s.HeadDim);
        string what = $"attention cpu-variant {dtype} ids that come back, blockRows {blockRows}";
        double tol = Ref.Tolerance(dtype, 1e-4);
        Check.Close(to.ToFloatArray(), r.O, tol, what + " o", seed);
        Check.Close(tlse.ToFloatArray(), r.Lse, 1e-5, what + " lse", seed);
        Check.Close(tdq.ToFloatArray(), r.Dq, tol, what + " dq", seed);
        Check.Close(tdk.ToFloatArray(), r.Dk, tol, what + " dk", seed);
        Check.Close(tdv.ToFloatArray(), r.Dv, tol, what + " dv", seed);
    }
}
