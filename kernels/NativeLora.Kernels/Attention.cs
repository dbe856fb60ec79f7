using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace NativeLora.Kernels;

/// <summary>
/// The row-wise parts of causal self-attention with grouped-query heads and a segment mask; the
/// products are strided-batched GEMMs in the native core (cuBLAS on tensor cores, OpenBLAS on the
/// CPU), composed by Ops/AttentionOp.cs. One path for both devices.
///
/// Math (τ = 1/√hd, S = Q·Kᵀ unscaled). Query i of batch row b sits at key position p = off + i
/// (off = Keys − Queries, 0 unless keys were cached before the queries); it may attend key j iff
/// j ≤ p, seg[j] = seg[p] and seg[p] ≥ 0. Packed sequences give each sequence its own segment id;
/// padding gets −1 (masked as a key; as a query its output, lse and gradients are 0).
///   forward:  P = softmax(τ·S + mask), lse = log Σ exp(τ·S) saved per query row, O = P·V
///   backward: P = exp(τ·S − lse) recomputed; dV = Pᵀ·dO; dP = dO·Vᵀ; D = rowsum(dO∘O);
///             dS = P∘(dP − D); dQ = τ·dS·K; dK = τ·dSᵀ·Q          (τ is folded into dS)
///
/// Layout. The model's activations are token-major: q, o [B, T, H·hd] = [B, T, KV, G·hd] with the G
/// query heads of kv head g side by side. One strided batch cannot reach them per kv head, so the
/// op first swaps the T and KV axes (<see cref="PermuteKernel{TI,SI,TO,SO}"/>): Qp [B, KV, T, G·hd],
/// Kp/Vp [B, KV, Tk, hd]. Then, per kv head, the G·T query rows are one matrix of row stride hd,
/// and a block of queries [i0, i1) is the contiguous rows [i0·G, i1·G): GQA costs no copies of K/V
/// and one GEMM covers every query head of a kv head. Scores of a block live in a [B·KV, nb·G,
/// keyEnd] buffer, row rr of (b, g) being query i0 + rr / G of head g·G + rr % G.
///
/// Row kernels come in two launch shapes with one body: GPU variant one group per row (reductions
/// by <see cref="GroupReduce"/>, coalesced), CPU variant one thread per row (barrier-free; ILGPU's
/// CPU accelerator emulates barriers at ~100× their cost).
/// </summary>
public static class Attention
{
    public const int MaxHeadDim = 256;

    /// <summary>A block of query rows of one attention call, as the row kernels see it.</summary>
    public struct Block
    {
        public int Queries, Keys, Heads, KvHeads;
        /// <summary>First query of the block and the number of queries in it.</summary>
        public int Row0, Rows;
        /// <summary>The block's GEMMs cover keys [0, KeyEnd): every key its last query may see.</summary>
        public int KeyEnd;
        public float Scale;

        public readonly int Group => Heads / KvHeads;
        public readonly int QueryOffset => Keys - Queries;
        /// <summary>Score rows of the block over all (b, g): B·H·Rows.</summary>
        public readonly long ScoreRows(int batch) => (long)batch * Heads * Rows;
    }

    /// <summary>Where score row <paramref name="row"/> of a block points: batch row b, head h, query i, and i's key position.</summary>
    private static void Locate(Block blk, long row, out int b, out int h, out int i, out int keyPos)
    {
        int g0 = blk.Group;
        long perBg = (long)blk.Rows * g0;
        long bg = row / perBg;
        int rr = (int)(row - bg * perBg);
        b = (int)(bg / blk.KvHeads);
        int g = (int)(bg - (long)b * blk.KvHeads);
        h = g * g0 + rr % g0;
        i = blk.Row0 + rr / g0;
        keyPos = blk.QueryOffset + i;
    }

    private static long LseIndex(Block blk, int b, int h, int i) => ((long)b * blk.Heads + h) * blk.Queries + i;

    // ---------------------------------------------------------------- reductions: a group's, or one thread's

    /// <summary>How a row kernel's lanes combine partial results.</summary>
    public interface IRowReduce
    {
        float Sum(float value, ArrayView<float> scratch);
        float Max(float value, ArrayView<float> scratch);
    }

    /// <summary>All lanes of a group (GPU variant).</summary>
    public struct GroupLanes : IRowReduce
    {
        public float Sum(float value, ArrayView<float> scratch) => GroupReduce.Sum(value, scratch);
        public float Max(float value, ArrayView<float> scratch) => GroupReduce.Max(value, scratch);
    }

    /// <summary>A single lane (CPU variant): nothing to combine.</summary>
    public struct OneLane : IRowReduce
    {
        public float Sum(float value, ArrayView<float> scratch) => value;
        public float Max(float value, ArrayView<float> scratch) => value;
    }

    // ---------------------------------------------------------------- layout

    /// <summary>
    /// dst [B, Y, X, C] = src [B, X, Y, C] with axes 1 and 2 swapped, converting the element type on the
    /// way (f32 accumulators back to the activations' dtype). Indexed by the destination: writes are
    /// coalesced, reads are contiguous runs of C.
    /// </summary>
    public static void PermuteKernel<TI, SI, TO, SO>(Index1D t, ArrayView<TI> src, ArrayView<TO> dst, int x, int y, int c, long n, long chunk)
        where TI : unmanaged where SI : struct, IStorage<TI> where TO : unmanaged where SO : struct, IStorage<TO>
    {
        SI si = default;
        SO so = default;
        long end = Math.Min(n, (t + 1L) * chunk);
        for (long e = t * chunk; e < end; e++)
        {
            long rest = e / c;
            int cc = (int)(e - rest * c);
            long rest2 = rest / x;
            int xx = (int)(rest - rest2 * x);
            long b = rest2 / y;
            int yy = (int)(rest2 - b * y);
            dst[e] = so.Store(si.Load(src[((b * x + xx) * y + yy) * c + cc]));
        }
    }

    /// <summary>dst [B, Y, X, C] ← src [B, X, Y, C].</summary>
    public static void Permute<TI, SI, TO, SO>(KernelSet ks, ArrayView<TI> src, ArrayView<TO> dst, int x, int y, int c)
        where TI : unmanaged where SI : struct, IStorage<TI> where TO : unmanaged where SO : struct, IStorage<TO>
    {
        var (threads, chunk) = ks.ElementLaunch(dst.Length);
        if (threads == 0) return;
        Action<Index1D, ArrayView<TI>, ArrayView<TO>, int, int, int, long, long> kernel = PermuteKernel<TI, SI, TO, SO>;
        ks.Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(threads, src, dst, x, y, c, dst.Length, chunk);
    }

    // ---------------------------------------------------------------- forward: masked softmax with lse

    private static void SoftmaxRow<T, S, R>(long row, int lane, int lanes, ArrayView<float> scores, ArrayView<T> probs,
        ArrayView<int> seg, ArrayView<float> lse, Block blk, int batch, ArrayView<float> scratch)
        where T : unmanaged where S : struct, IStorage<T> where R : struct, IRowReduce
    {
        S s = default;
        R red = default;
        Locate(blk, row, out int b, out int h, out int i, out int p);
        long keyBase = (long)b * blk.Keys;
        long o = row * blk.KeyEnd;
        int segI = seg[keyBase + p];
        float m = float.NegativeInfinity;
        if (segI >= 0)
            for (int j = lane; j <= p; j += lanes)
                if (seg[keyBase + j] == segI) m = XMath.Max(m, scores[o + j] * blk.Scale);
        m = red.Max(m, scratch);
        float sum = 0;
        if (m > float.NegativeInfinity)
            for (int j = lane; j <= p; j += lanes)
                if (seg[keyBase + j] == segI) sum += XMath.Exp(scores[o + j] * blk.Scale - m);
        sum = red.Sum(sum, scratch);
        float rowLse = sum > 0 ? m + XMath.Log(sum) : 0f;
        for (int j = lane; j < blk.KeyEnd; j += lanes)
            probs[o + j] = s.Store(sum > 0 && j <= p && seg[keyBase + j] == segI ? XMath.Exp(scores[o + j] * blk.Scale - rowLse) : 0f);
        if (lane == 0) lse[LseIndex(blk, b, h, i)] = rowLse;
    }

    public static void SoftmaxGroupKernel<T, S>(ArrayView<float> scores, ArrayView<T> probs, ArrayView<int> seg, ArrayView<float> lse, Block blk, int batch)
        where T : unmanaged where S : struct, IStorage<T> =>
        SoftmaxRow<T, S, GroupLanes>(Grid.IdxX, Group.IdxX, Group.DimX, scores, probs, seg, lse, blk, batch, SharedMemory.GetDynamic<float>());

    public static void SoftmaxRowKernel<T, S>(Index1D row, ArrayView<float> scores, ArrayView<T> probs, ArrayView<int> seg, ArrayView<float> lse, Block blk, int batch)
        where T : unmanaged where S : struct, IStorage<T> =>
        SoftmaxRow<T, S, OneLane>(row, 0, 1, scores, probs, seg, lse, blk, batch, default);

    /// <summary>probs = masked softmax(τ·scores) over the block's [B·H·Rows, KeyEnd] rows; writes lse of its queries.</summary>
    public static void Softmax<T, S>(KernelSet ks, ArrayView<float> scores, ArrayView<T> probs, ArrayView<int> seg, ArrayView<float> lse, Block blk, int batch)
        where T : unmanaged where S : struct, IStorage<T>
    {
        int rows = checked((int)blk.ScoreRows(batch));
        if (ks.GpuVariants)
        {
            Action<ArrayView<float>, ArrayView<T>, ArrayView<int>, ArrayView<float>, Block, int> kernel = SoftmaxGroupKernel<T, S>;
            ks.Load(kernel, a => a.LoadStreamKernel(kernel))(ks.RowConfig(rows), scores, probs, seg, lse, blk, batch);
        }
        else
        {
            Action<Index1D, ArrayView<float>, ArrayView<T>, ArrayView<int>, ArrayView<float>, Block, int> kernel = SoftmaxRowKernel<T, S>;
            ks.Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(rows, scores, probs, seg, lse, blk, batch);
        }
    }

    // ---------------------------------------------------------------- backward

    /// <summary>P = exp(τ·S − lse), masked, elementwise over the block's score rows (no reduction: one body for both variants).</summary>
    public static void RecomputeProbsKernel<T, S>(Index1D t, ArrayView<float> scores, ArrayView<T> probs, ArrayView<int> seg, ArrayView<float> lse,
        Block blk, long n, long chunk)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        long end = Math.Min(n, (t + 1L) * chunk);
        for (long e = t * chunk; e < end; e++)
        {
            long row = e / blk.KeyEnd;
            int j = (int)(e - row * blk.KeyEnd);
            Locate(blk, row, out int b, out int h, out int i, out int p);
            long keyBase = (long)b * blk.Keys;
            int segI = seg[keyBase + p];
            bool allowed = j <= p && segI >= 0 && seg[keyBase + j] == segI;
            probs[e] = s.Store(allowed ? XMath.Exp(scores[e] * blk.Scale - lse[LseIndex(blk, b, h, i)]) : 0f);
        }
    }

    /// <summary>In place over probs: dS = τ·P∘(dP − D), with dP the f32 scores buffer and D = rowsum(dO∘O) per query.</summary>
    public static void GradScoresKernel<T, S>(Index1D t, ArrayView<float> dp, ArrayView<T> probs, ArrayView<float> dRow, Block blk, long n, long chunk)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        long end = Math.Min(n, (t + 1L) * chunk);
        for (long e = t * chunk; e < end; e++)
        {
            long row = e / blk.KeyEnd;
            Locate(blk, row, out int b, out int h, out int i, out _);
            float pr = s.Load(probs[e]);
            probs[e] = s.Store(pr * (dp[e] - dRow[LseIndex(blk, b, h, i)]) * blk.Scale);
        }
    }

    /// <summary>D[(b·H + h)·T + i] = Σ_d dO·O over the head's hd values of token (b, i); one thread per (token, head).</summary>
    public static void RowDotKernel<T, S>(Index1D t, ArrayView<T> dO, ArrayView<T> o, ArrayView<float> dRow, int queries, int heads, int headDim, long n, long chunk)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        long end = Math.Min(n, (t + 1L) * chunk);
        for (long r = t * chunk; r < end; r++)
        {
            long token = r / heads;
            int h = (int)(r - token * heads);
            long b = token / queries;
            int i = (int)(token - b * queries);
            float acc = 0;
            for (int d = 0; d < headDim; d++) acc += s.Load(dO[r * headDim + d]) * s.Load(o[r * headDim + d]);
            dRow[(b * heads + h) * queries + i] = acc;
        }
    }

    public static void RecomputeProbs<T, S>(KernelSet ks, ArrayView<float> scores, ArrayView<T> probs, ArrayView<int> seg, ArrayView<float> lse, Block blk, int batch)
        where T : unmanaged where S : struct, IStorage<T>
    {
        long n = blk.ScoreRows(batch) * blk.KeyEnd;
        var (threads, chunk) = ks.ElementLaunch(n);
        if (threads == 0) return;
        Action<Index1D, ArrayView<float>, ArrayView<T>, ArrayView<int>, ArrayView<float>, Block, long, long> kernel = RecomputeProbsKernel<T, S>;
        ks.Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(threads, scores, probs, seg, lse, blk, n, chunk);
    }

    public static void GradScores<T, S>(KernelSet ks, ArrayView<float> dp, ArrayView<T> probs, ArrayView<float> dRow, Block blk, int batch)
        where T : unmanaged where S : struct, IStorage<T>
    {
        long n = blk.ScoreRows(batch) * blk.KeyEnd;
        var (threads, chunk) = ks.ElementLaunch(n);
        if (threads == 0) return;
        Action<Index1D, ArrayView<float>, ArrayView<T>, ArrayView<float>, Block, long, long> kernel = GradScoresKernel<T, S>;
        ks.Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(threads, dp, probs, dRow, blk, n, chunk);
    }

    public static void RowDot<T, S>(KernelSet ks, ArrayView<T> dO, ArrayView<T> o, ArrayView<float> dRow, int batch, int queries, int heads, int headDim)
        where T : unmanaged where S : struct, IStorage<T>
    {
        long n = (long)batch * queries * heads;
        var (threads, chunk) = ks.ElementLaunch(n);
        if (threads == 0) return;
        Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<float>, int, int, int, long, long> kernel = RowDotKernel<T, S>;
        ks.Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(threads, dO, o, dRow, queries, heads, headDim, n, chunk);
    }

    // ---------------------------------------------------------------- decoding with a paged KV cache

    /// <summary>
    /// One new query per row against that row's cached keys/values (positions 0..len−1, the new one
    /// included): q, o [B, H·hd]; kCache, vCache [pages·pageSize, KV·hd]. Position t of row b lives in
    /// cache row pageTable[b·maxPages + t / pageSize]·pageSize + t % pageSize, so rows of different
    /// lengths share one pool of fixed-size pages (vLLM's PagedAttention layout). One thread per
    /// (row, head) with an online softmax; decoding is memory-bound and tiny next to the projections.
    /// </summary>
    public static void DecodeKernel<T, S>(Index1D i, ArrayView<T> q, ArrayView<T> kCache, ArrayView<T> vCache, ArrayView<int> lengths,
        ArrayView<int> pageTable, ArrayView<T> o, int heads, int kvHeads, int headDim, int maxPages, int pageSize, float scale)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        var acc = LocalMemory.Allocate<float>(MaxHeadDim);
        int b = i / heads, h = i - b * heads;
        int g = h / (heads / kvHeads);
        int len = lengths[b];
        long qBase = (long)b * heads * headDim + (long)h * headDim;
        long kvStride = (long)kvHeads * headDim;
        for (int d = 0; d < headDim; d++) acc[d] = 0;
        float m = float.NegativeInfinity, l = 0;
        for (int t = 0; t < len; t++)
        {
            int page = pageTable[(long)b * maxPages + t / pageSize];
            long kBase = ((long)page * pageSize + t % pageSize) * kvStride + (long)g * headDim;
            float dot = 0;
            for (int d = 0; d < headDim; d++) dot += s.Load(q[qBase + d]) * s.Load(kCache[kBase + d]);
            float sc = dot * scale;
            float mNew = XMath.Max(m, sc);
            float corr = m == float.NegativeInfinity ? 0f : XMath.Exp(m - mNew);
            float p = XMath.Exp(sc - mNew);
            l = l * corr + p;
            for (int d = 0; d < headDim; d++) acc[d] = acc[d] * corr + p * s.Load(vCache[kBase + d]);
            m = mNew;
        }
        float inv = l > 0 ? 1f / l : 0f;
        for (int d = 0; d < headDim; d++) o[qBase + d] = s.Store(acc[d] * inv);
    }

    public static void Decode<T, S>(KernelSet ks, ArrayView<T> q, ArrayView<T> kCache, ArrayView<T> vCache, ArrayView<int> lengths,
        ArrayView<int> pageTable, ArrayView<T> o, int batch, int heads, int kvHeads, int headDim, int maxPages, int pageSize, float scale)
        where T : unmanaged where S : struct, IStorage<T>
    {
        Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<int>, ArrayView<int>, ArrayView<T>, int, int, int, int, int, float> kernel = DecodeKernel<T, S>;
        ks.Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(batch * heads, q, kCache, vCache, lengths, pageTable, o, heads, kvHeads, headDim, maxPages, pageSize, scale);
    }
}
