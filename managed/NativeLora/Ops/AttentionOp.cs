using NativeLora.Kernels;
using NativeLora.Tensors;
using static NativeLora.Ops.FloatDispatch;

namespace NativeLora.Ops;

/// <summary>
/// Sizes of one attention call: Batch rows, each with Keys key/value positions of which the last SeqLen
/// are the queries (query i sits at key position Keys − SeqLen + i); Heads query heads share KvHeads
/// key/value heads. KeyLen 0 means Keys = SeqLen (training, eval, a prefill from position 0). KeyLen &gt;
/// SeqLen continues after keys that are already there (a prefill after a cached prefix): the caller
/// gathers the cached keys/values in front of the new ones. Layout: q, o [B·SeqLen, H·hd]; k, v
/// [B·Keys, KV·hd]; segments I32 [B·Keys] (of the keys; a query's segment is its key position's);
/// lse f32 [B·H·SeqLen], entry (b·H + h)·SeqLen + i.
/// </summary>
public readonly record struct AttentionShape(int Batch, int SeqLen, int Heads, int KvHeads, int HeadDim, int KeyLen = 0)
{
    public int Tokens => Batch * SeqLen;
    public int Keys => KeyLen == 0 ? SeqLen : KeyLen;
    /// <summary>Key position of query 0 (the causal offset).</summary>
    public int QueryOffset => Keys - SeqLen;
    public int Group => Heads / KvHeads;
    public float Scale => 1f / MathF.Sqrt(HeadDim);

    public void Validate()
    {
        if (Batch < 1 || SeqLen < 1 || Heads < 1 || KvHeads < 1 || HeadDim < 1 || KeyLen < 0)
            throw new ArgumentException($"invalid attention shape {this}");
        if (Keys < SeqLen)
            throw new ArgumentException($"attention needs at least as many keys as queries, got {Keys} keys for {SeqLen} queries");
        if (Heads % KvHeads != 0)
            throw new ArgumentException($"grouped-query attention needs n_kv_heads to divide n_heads, got {Heads} and {KvHeads}");
        if (HeadDim > Attention.MaxHeadDim)
            throw new ArgumentException($"head dimension {HeadDim} exceeds the supported maximum {Attention.MaxHeadDim}");
    }
}

/// <summary>
/// Causal GQA self-attention with a segment mask (math and row kernels: Kernels/Attention.cs), one
/// path on every device: per block of query rows, strided-batched GEMMs in the native core around
/// the row kernels. Operands in the activations' dtype (f32, bf16, f16), scores in f32, dK/dV
/// accumulated in f32. The block size comes from a scratch budget, so a long sequence never
/// materialises T×T scores for all heads at once; a causal block covers only the keys its last
/// query may see.
/// </summary>
public static class AttentionOp
{
    /// <summary>Scratch for one block's scores (f32) and probabilities (dtype), over all heads and batch rows.</summary>
    public const long DefaultScratchBytes = 256L << 20;

    /// <summary>Query rows per block: as many as the scratch budget holds, a multiple of 64 when split.</summary>
    public static int BlockRows(AttentionShape s, DType dtype, long scratchBytes = DefaultScratchBytes)
    {
        long perRow = (long)s.Batch * s.Heads * s.Keys * (4 + dtype.SizeOf());
        long rows = Math.Max(1, scratchBytes / perRow);
        if (rows >= s.SeqLen) return s.SeqLen;
        return rows >= 64 ? (int)(rows / 64 * 64) : (int)rows;
    }

    /// <summary>
    /// Device memory Forward (or Backward) allocates for one call besides its arguments: the head-major copies,
    /// the backward's f32 dK/dV accumulators and rowsums, and one block's scores (f32) and probabilities (dtype).
    /// The memory planner reads it from here.
    /// </summary>
    public static long ScratchBytes(AttentionShape s, DType dtype, bool backward, int blockRows = 0)
    {
        long e = dtype.SizeOf();
        long q = (long)s.Tokens * s.Heads * s.HeadDim, kv = (long)s.Batch * s.Keys * s.KvHeads * s.HeadDim;
        int nb = ResolveBlockRows(s, dtype, blockRows);
        long block = (long)s.Batch * s.Heads * nb * s.Keys * (4 + e);
        return backward
            ? (3 * q + 2 * kv) * e + 2 * kv * 4 + (long)s.Batch * s.Heads * s.SeqLen * 4 + block
            : (2 * q + 2 * kv) * e + block;
    }

    /// <summary>o and lse are overwritten. blockRows 0: from <see cref="BlockRows"/>.</summary>
    public static void Forward(KernelSet k, Tensor q, Tensor key, Tensor v, Tensor segments, Tensor o, Tensor lse, AttentionShape s, int blockRows = 0)
    {
        using var _profile = Diagnostics.OpProfiler.Time("attention", q.Device);
        Check(q, key, v, segments, lse, s);
        SameDType(q.DType, (o, "o"));
        RequireElements(o, q.ElementCount, "o");
        var dev = q.Device;
        var dt = q.DType;
        int nb = ResolveBlockRows(s, dt, blockRows);
        using var qp = Flat(dev, dt, q.ElementCount);
        using var kp = Flat(dev, dt, key.ElementCount);
        using var vp = Flat(dev, dt, v.ElementCount);
        using var op = Flat(dev, dt, o.ElementCount);
        using var scores = Flat(dev, DType.F32, (long)s.Batch * s.Heads * nb * s.Keys);
        using var probs = Flat(dev, dt, scores.ElementCount);
        ToHeadMajor(k, q, qp, s, s.SeqLen, s.Group);
        ToHeadMajor(k, key, kp, s, s.Keys, 1);
        ToHeadMajor(k, v, vp, s, s.Keys, 1);
        for (int i0 = 0; i0 < s.SeqLen; i0 += nb)
        {
            var blk = Block(s, i0, Math.Min(nb, s.SeqLen - i0));
            var m = new BlockMatrices(s, blk);
            GemmStrided.Run(m.QueryRows(qp), m.KeyRows(kp), m.Scores(scores), m.Batch, transB: true);
            Run(k, dt, new SoftmaxCall(k, scores, probs, segments, lse, blk, s.Batch));
            GemmStrided.Run(m.Scores(probs), m.KeyRows(vp), m.QueryRows(op), m.Batch);
        }
        FromHeadMajor(k, op, o, s, s.SeqLen, s.Group);
    }

    /// <summary>dq, dk, dv are overwritten. blockRows as in <see cref="Forward"/>.</summary>
    public static void Backward(KernelSet k, Tensor q, Tensor key, Tensor v, Tensor segments, Tensor o, Tensor lse, Tensor dO,
        Tensor dq, Tensor dk, Tensor dv, AttentionShape s, int blockRows = 0)
    {
        using var _profile = Diagnostics.OpProfiler.Time("attention.bwd", q.Device);
        Check(q, key, v, segments, lse, s);
        SameDType(q.DType, (o, "o"), (dO, "dO"), (dq, "dq"), (dk, "dk"), (dv, "dv"));
        RequireElements(o, q.ElementCount, "o");
        RequireElements(dO, q.ElementCount, "dO");
        RequireElements(dq, q.ElementCount, "dq");
        RequireElements(dk, key.ElementCount, "dk");
        RequireElements(dv, v.ElementCount, "dv");
        var dev = q.Device;
        var dt = q.DType;
        int nb = ResolveBlockRows(s, dt, blockRows);
        using var dRow = Flat(dev, DType.F32, lse.ElementCount);
        Run(k, dt, new RowDotCall(k, dO, o, dRow, s));
        using var qp = Flat(dev, dt, q.ElementCount);
        using var kp = Flat(dev, dt, key.ElementCount);
        using var vp = Flat(dev, dt, v.ElementCount);
        using var dOp = Flat(dev, dt, dO.ElementCount);
        using var dqp = Flat(dev, dt, dq.ElementCount);
        using var dkp = Flat(dev, DType.F32, dk.ElementCount);
        using var dvp = Flat(dev, DType.F32, dv.ElementCount);
        using var scores = Flat(dev, DType.F32, (long)s.Batch * s.Heads * nb * s.Keys);
        using var probs = Flat(dev, dt, scores.ElementCount);
        ToHeadMajor(k, q, qp, s, s.SeqLen, s.Group);
        ToHeadMajor(k, dO, dOp, s, s.SeqLen, s.Group);
        ToHeadMajor(k, key, kp, s, s.Keys, 1);
        ToHeadMajor(k, v, vp, s, s.Keys, 1);
        // The blocks accumulate into dK/dV. The last block comes first: its keys reach the end (KeyEnd = Keys), so its
        // GEMMs write every row with beta 0 and no fill is needed; the earlier blocks add into their key prefix.
        int lastStart = (s.SeqLen - 1) / nb * nb;
        for (int i0 = lastStart; i0 >= 0; i0 -= nb)
        {
            var blk = Block(s, i0, Math.Min(nb, s.SeqLen - i0));
            var m = new BlockMatrices(s, blk);
            float accumulate = i0 == lastStart ? 0f : 1f;
            GemmStrided.Run(m.QueryRows(qp), m.KeyRows(kp), m.Scores(scores), m.Batch, transB: true);
            Run(k, dt, new RecomputeProbsCall(k, scores, probs, segments, lse, blk, s.Batch));
            GemmStrided.Run(m.Scores(probs), m.QueryRows(dOp), m.KeyRows(dvp), m.Batch, transA: true, beta: accumulate);    // dV += Pᵀ·dO
            GemmStrided.Run(m.QueryRows(dOp), m.KeyRows(vp), m.Scores(scores), m.Batch, transB: true);                     // dP = dO·Vᵀ
            Run(k, dt, new GradScoresCall(k, scores, probs, dRow, blk, s.Batch));
            GemmStrided.Run(m.Scores(probs), m.KeyRows(kp), m.QueryRows(dqp), m.Batch);                                    // dQ = τ·dS·K
            GemmStrided.Run(m.Scores(probs), m.QueryRows(qp), m.KeyRows(dkp), m.Batch, transA: true, beta: accumulate);    // dK += τ·dSᵀ·Q
        }
        FromHeadMajor(k, dqp, dq, s, s.SeqLen, s.Group);
        FromHeadMajor(k, dkp, dk, s, s.Keys, 1);
        FromHeadMajor(k, dvp, dv, s, s.Keys, 1);
    }

    // a caller's block size (tests pin several), else the one the scratch budget gives
    private static int ResolveBlockRows(AttentionShape s, DType dtype, int blockRows) =>
        blockRows > 0 ? Math.Min(blockRows, s.SeqLen) : BlockRows(s, dtype);

    private static Tensor Flat(Devices.ComputeDevice dev, DType dtype, long count) => dev.Allocate(dtype, checked((int)count));

    private static Attention.Block Block(AttentionShape s, int i0, int rows) => new()
    {
        Queries = s.SeqLen, Keys = s.Keys, Heads = s.Heads, KvHeads = s.KvHeads,
        Row0 = i0, Rows = rows, KeyEnd = s.QueryOffset + i0 + rows, Scale = s.Scale,
    };

    /// <summary>
    /// The GEMM operands of one block, batched over (b, g): B·KV matrices each. Query-side tensors are
    /// head-major [B, KV, T, G·hd] (rows of hd, the block's rows [i0·G, i1·G)); key-side tensors
    /// [B, KV, Tk, hd] (the block's keys [0, KeyEnd)); scores [B·KV, Rows·G, KeyEnd] dense.
    /// </summary>
    private readonly record struct BlockMatrices(AttentionShape S, Attention.Block Blk)
    {
        public int Batch => S.Batch * S.KvHeads;
        private int QueryRowCount => Blk.Rows * S.Group;

        public StridedMatrices QueryRows(Tensor t) =>
            new(t, (long)Blk.Row0 * S.Group * S.HeadDim, QueryRowCount, S.HeadDim, S.HeadDim, (long)S.SeqLen * S.Group * S.HeadDim);

        public StridedMatrices KeyRows(Tensor t) =>
            new(t, 0, Blk.KeyEnd, S.HeadDim, S.HeadDim, (long)S.Keys * S.HeadDim);

        public StridedMatrices Scores(Tensor t) =>
            new(t, 0, QueryRowCount, Blk.KeyEnd, Blk.KeyEnd, (long)QueryRowCount * Blk.KeyEnd);
    }

    // token-major [B, T, KV, c·hd] → head-major [B, KV, T, c·hd] (c = G for queries, 1 for keys)
    private static void ToHeadMajor(KernelSet k, Tensor src, Tensor dst, AttentionShape s, int tokens, int c) =>
        Permute(k, src, dst, s.Batch, tokens, s.KvHeads, c * s.HeadDim);

    private static void FromHeadMajor(KernelSet k, Tensor src, Tensor dst, AttentionShape s, int tokens, int c) =>
        Permute(k, src, dst, s.Batch, s.KvHeads, tokens, c * s.HeadDim);

    // dst [B, Y, X, C] ← src [B, X, Y, C]; src may be f32 (accumulators) with dst in the activations' dtype
    private static void Permute(KernelSet k, Tensor src, Tensor dst, int batch, int x, int y, int c)
    {
        RequireElements(dst, (long)batch * x * y * c, "permute output");
        RequireElements(src, dst.ElementCount, "permute input");
        if (src.DType != dst.DType && src.DType != DType.F32)
            throw new ArgumentException($"attention permute from {src.DType.Name()} to {dst.DType.Name()} is not supported");
        Run(src.DType, new PermuteFrom(k, src, dst, x, y, c));
    }

    // ---- each row kernel call written once; the variant (GPU: ILGPU kernels, CPU: Kernels/AttentionCpu.cs) is chosen by FloatDispatch

    private readonly record struct SoftmaxCall(KernelSet K, Tensor Scores, Tensor Probs, Tensor Seg, Tensor Lse, Attention.Block Blk, int Batch) : IVariantOp
    {
        public void Gpu<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            Attention.Softmax<T, S>(K, Scores.View<float>(), Probs.View<T>(), Seg.View<int>(), Lse.View<float>(), Blk, Batch);
        public void Cpu<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            AttentionCpu.Softmax<T, S>(Scores.Host<float>(), Probs.Host<T>(), Seg.Host<int>(), Lse.Host<float>(), Blk, Batch);
    }

    private readonly record struct RecomputeProbsCall(KernelSet K, Tensor Scores, Tensor Probs, Tensor Seg, Tensor Lse, Attention.Block Blk, int Batch) : IVariantOp
    {
        public void Gpu<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            Attention.RecomputeProbs<T, S>(K, Scores.View<float>(), Probs.View<T>(), Seg.View<int>(), Lse.View<float>(), Blk, Batch);
        public void Cpu<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            AttentionCpu.RecomputeProbs<T, S>(Scores.Host<float>(), Probs.Host<T>(), Seg.Host<int>(), Lse.Host<float>(), Blk, Batch);
    }

    private readonly record struct GradScoresCall(KernelSet K, Tensor Dp, Tensor Probs, Tensor DRow, Attention.Block Blk, int Batch) : IVariantOp
    {
        public void Gpu<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            Attention.GradScores<T, S>(K, Dp.View<float>(), Probs.View<T>(), DRow.View<float>(), Blk, Batch);
        public void Cpu<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            AttentionCpu.GradScores<T, S>(Dp.Host<float>(), Probs.Host<T>(), DRow.Host<float>(), Blk, Batch);
    }

    private readonly record struct RowDotCall(KernelSet K, Tensor DO, Tensor O, Tensor DRow, AttentionShape S) : IVariantOp
    {
        public void Gpu<T, TS>() where T : unmanaged where TS : struct, IStorage<T> =>
            Attention.RowDot<T, TS>(K, DO.View<T>(), O.View<T>(), DRow.View<float>(), S.Batch, S.SeqLen, S.Heads, S.HeadDim);
        public void Cpu<T, TS>() where T : unmanaged where TS : struct, IStorage<T> =>
            AttentionCpu.RowDot<T, TS>(DO.Host<T>(), O.Host<T>(), DRow.Host<float>(), S.Batch, S.SeqLen, S.Heads, S.HeadDim);
    }

    // a permute dispatches twice: on the source's dtype, then on the destination's
    private readonly record struct PermuteFrom(KernelSet K, Tensor Src, Tensor Dst, int X, int Y, int C) : IFloatOp
    {
        public void Run<TI, SI>() where TI : unmanaged where SI : struct, IStorage<TI> => FloatDispatch.Run(K, Dst.DType, new PermuteInto<TI, SI>(K, Src, Dst, X, Y, C));
    }

    private readonly record struct PermuteInto<TI, SI>(KernelSet K, Tensor Src, Tensor Dst, int X, int Y, int C) : IVariantOp where TI : unmanaged where SI : struct, IStorage<TI>
    {
        public void Gpu<TO, SO>() where TO : unmanaged where SO : struct, IStorage<TO> => Attention.Permute<TI, SI, TO, SO>(K, Src.View<TI>(), Dst.View<TO>(), X, Y, C);
        public void Cpu<TO, SO>() where TO : unmanaged where SO : struct, IStorage<TO> => AttentionCpu.Permute<TI, SI, TO, SO>(Src.Host<TI>(), Dst.Host<TO>(), X, Y, C);
    }

    private static void Check(Tensor q, Tensor key, Tensor v, Tensor segments, Tensor lse, AttentionShape s)
    {
        s.Validate();
        RequireElements(q, (long)s.Tokens * s.Heads * s.HeadDim, "q");
        RequireElements(key, (long)s.Batch * s.Keys * s.KvHeads * s.HeadDim, "k");
        RequireElements(v, key.ElementCount, "v");
        SameDType(q.DType, (key, "k"), (v, "v"));
        Require(segments, DType.I32, "segments");
        RequireElements(segments, (long)s.Batch * s.Keys, "segments");
        Require(lse, DType.F32, "lse");
        RequireElements(lse, (long)s.Batch * s.Heads * s.SeqLen, "lse");
    }
}
