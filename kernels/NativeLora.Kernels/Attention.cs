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
/// op first swaps the T and KV axes (<see cref="Permute{TI,SI,TO,SO}"/>): Qp [B, KV, T, G·hd],
/// Kp/Vp [B, KV, Tk, hd]. Then, per kv head, the G·T query rows are one matrix of row stride hd,
/// and a block of queries [i0, i1) is the contiguous rows [i0·G, i1·G): GQA costs no copies of K/V
/// and one GEMM covers every query head of a kv head. Scores of a block live in a [B·KV, nb·G,
/// keyEnd] buffer, row rr of (b, g) being query i0 + rr / G of head g·G + rr % G.
///
/// The ILGPU row kernels here are the GPU variant: one warp per row for rows of at most 1024 keys (reductions by
/// shuffles alone), one group per row above (reductions by <see cref="GroupReduce"/>); coalesced, index arithmetic
/// once per row. The CPU variant of the same
/// row ops is host SIMD code, Kernels/AttentionCpu.cs; Ops/AttentionOp.cs picks between them.
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
    internal static void Locate(Block blk, int row, out int b, out int h, out int i, out int keyPos)
    {
        int g0 = blk.Group;
        int perBg = blk.Rows * g0;
        int bg = row / perBg;
        int rr = row - bg * perBg;
        b = bg / blk.KvHeads;
        int g = bg - b * blk.KvHeads;
        h = g * g0 + rr % g0;
        i = blk.Row0 + rr / g0;
        keyPos = blk.QueryOffset + i;
    }

    internal static long LseIndex(Block blk, int b, int h, int i) => ((long)b * blk.Heads + h) * blk.Queries + i;

    /// <summary>
    /// Score rows up to this many keys go one per warp, several rows per group, reduced by shuffles alone (no barrier),
    /// as PyTorch's warp softmax does for rows of at most 1024; longer rows go one per group.
    /// </summary>
    public const int WarpRowMaxWidth = 1024;

    /// <summary>
    /// How rows of <paramref name="width"/> columns map onto groups: one per warp (RowsPerGroup &gt; 1) when short,
    /// else one per group of a multiple of the warp size near the row's width (at most RowGroupSize), with
    /// <see cref="GroupReduce"/> scratch when the kernel reduces.
    /// </summary>
    private static (KernelConfig Config, int RowsPerGroup) RowsConfig(KernelSet ks, long rows, int width, bool reduces)
    {
        int warp = ks.Accelerator.WarpSize;
        int rowsPerGroup = width <= WarpRowMaxWidth ? Math.Max(1, ks.RowGroupSize / warp) : 1;
        int group = rowsPerGroup > 1 ? rowsPerGroup * warp : Math.Min(ks.RowGroupSize, Math.Max(warp, (width + warp - 1) / warp * warp));
        int groups = checked((int)((rows + rowsPerGroup - 1) / rowsPerGroup));
        return (reduces
            ? new KernelConfig(groups, group, SharedMemoryConfig.RequestDynamic<float>(GroupReduce.ScratchLength(group, warp)))
            : new KernelConfig(groups, group), rowsPerGroup);
    }

    // The row a thread works on, its lane in the row and the lanes per row (see RowsConfig). Uniform per group, so a
    // group-per-row kernel's barriers stay uniform. Warps past the last row of the last group get the last row and
    // false: a reducing kernel redoes that row (writing the same values again, so every thread reaches every shuffle),
    // a kernel without reductions returns.
    private static bool RowOf(int rowsPerGroup, long rows, out int row, out int lane, out int lanes)
    {
        if (rowsPerGroup <= 1)
        {
            (row, lane, lanes) = (Grid.IdxX, Group.IdxX, Group.DimX);
            return true;
        }
        long own = (long)Grid.IdxX * rowsPerGroup + Warp.WarpIdx;
        (row, lane, lanes) = ((int)Math.Min(rows - 1, own), Warp.LaneIdx, Warp.WarpSize);
        return own < rows;
    }

    private static float RowMax(float v, int rowsPerGroup) => rowsPerGroup > 1 ? GroupReduce.WarpMax(v) : GroupReduce.Max(v, SharedMemory.GetDynamic<float>());
    private static float RowSum(float v, int rowsPerGroup) => rowsPerGroup > 1 ? GroupReduce.WarpSum(v) : GroupReduce.Sum(v, SharedMemory.GetDynamic<float>());

    // ---------------------------------------------------------------- layout

    /// <summary>
    /// dst [B, Y, X, C] = src [B, X, Y, C] with axes 1 and 2 swapped, converting the element type on the way (f32
    /// accumulators back to the activations' dtype). One destination row of C per group: coalesced reads and
    /// writes, index arithmetic once per row.
    /// </summary>
    public static void PermuteKernel<TI, SI, TO, SO>(ArrayView<TI> src, ArrayView<TO> dst, int x, int y, int c)
        where TI : unmanaged where SI : struct, IStorage<TI> where TO : unmanaged where SO : struct, IStorage<TO>
    {
        SI si = default;
        SO so = default;
        int row = Grid.IdxX;
        int rest = row / x; // destination row (b, yy, xx) of [B, Y, X]
        int xx = row - rest * x;
        int b = rest / y, yy = rest - b * y;
        long from = (((long)b * x + xx) * y + yy) * c, to = (long)row * c;
        for (int cc = Group.IdxX; cc < c; cc += Group.DimX) dst[to + cc] = so.Store(si.Load(src[from + cc]));
    }

    /// <summary>dst [B, Y, X, C] ← src [B, X, Y, C].</summary>
    public static void Permute<TI, SI, TO, SO>(KernelSet ks, ArrayView<TI> src, ArrayView<TO> dst, int x, int y, int c)
        where TI : unmanaged where SI : struct, IStorage<TI> where TO : unmanaged where SO : struct, IStorage<TO>
    {
        long rows = dst.Length / c;
        if (rows == 0) return;
        Action<ArrayView<TI>, ArrayView<TO>, int, int, int> kernel = PermuteKernel<TI, SI, TO, SO>;
        int warp = ks.Accelerator.WarpSize;
        var config = new KernelConfig(checked((int)rows), Math.Min(ks.RowGroupSize, Math.Max(warp, (c + warp - 1) / warp * warp)));
        ks.Load(kernel, a => a.LoadStreamKernel(kernel))(config, src, dst, x, y, c);
    }

    // ---------------------------------------------------------------- forward: masked softmax with lse

    /// <summary>probs = masked softmax(τ·scores) per score row of the block; writes the lse of its query.</summary>
    public static void SoftmaxKernel<T, S>(ArrayView<float> scores, ArrayView<T> probs, ArrayView<int> seg, ArrayView<float> lse, Block blk, long rows, int rowsPerGroup)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        RowOf(rowsPerGroup, rows, out int row, out int lane, out int lanes);
        Locate(blk, row, out int b, out int h, out int i, out int p);
        long keyBase = (long)b * blk.Keys;
        long o = (long)row * blk.KeyEnd;
        int segI = seg[keyBase + p];
        float m = float.NegativeInfinity;
        if (segI >= 0)
            for (int j = lane; j <= p; j += lanes)
                if (seg[keyBase + j] == segI) m = XMath.Max(m, scores[o + j] * blk.Scale);
        m = RowMax(m, rowsPerGroup);
        float sum = 0;
        if (m > float.NegativeInfinity)
            for (int j = lane; j <= p; j += lanes)
                if (seg[keyBase + j] == segI) sum += XMath.Exp(scores[o + j] * blk.Scale - m);
        sum = RowSum(sum, rowsPerGroup);
        float rowLse = sum > 0 ? m + XMath.Log(sum) : 0f;
        for (int j = lane; j < blk.KeyEnd; j += lanes)
            probs[o + j] = s.Store(sum > 0 && j <= p && seg[keyBase + j] == segI ? XMath.Exp(scores[o + j] * blk.Scale - rowLse) : 0f);
        if (lane == 0) lse[LseIndex(blk, b, h, i)] = rowLse;
    }

    /// <summary>probs = masked softmax(τ·scores) over the block's [B·H·Rows, KeyEnd] rows; writes lse of its queries.</summary>
    public static void Softmax<T, S>(KernelSet ks, ArrayView<float> scores, ArrayView<T> probs, ArrayView<int> seg, ArrayView<float> lse, Block blk, int batch)
        where T : unmanaged where S : struct, IStorage<T>
    {
        long rows = blk.ScoreRows(batch);
        var (config, rowsPerGroup) = RowsConfig(ks, rows, blk.KeyEnd, reduces: true);
        Action<ArrayView<float>, ArrayView<T>, ArrayView<int>, ArrayView<float>, Block, long, int> kernel = SoftmaxKernel<T, S>;
        ks.Load(kernel, a => a.LoadStreamKernel(kernel))(config, scores, probs, seg, lse, blk, rows, rowsPerGroup);
    }

    // ---------------------------------------------------------------- backward

    /// <summary>P = exp(τ·S − lse), masked, per score row of the block (the backward's recompute).</summary>
    public static void RecomputeProbsKernel<T, S>(ArrayView<float> scores, ArrayView<T> probs, ArrayView<int> seg, ArrayView<float> lse, Block blk, long rows, int rowsPerGroup)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        if (!RowOf(rowsPerGroup, rows, out int row, out int lane, out int lanes)) return; // no shuffles here; GradScores works in place
        Locate(blk, row, out int b, out int h, out int i, out int p);
        long keyBase = (long)b * blk.Keys;
        long o = (long)row * blk.KeyEnd;
        int segI = seg[keyBase + p];
        float rowLse = lse[LseIndex(blk, b, h, i)];
        for (int j = lane; j < blk.KeyEnd; j += lanes)
            probs[o + j] = s.Store(j <= p && segI >= 0 && seg[keyBase + j] == segI ? XMath.Exp(scores[o + j] * blk.Scale - rowLse) : 0f);
    }

    /// <summary>In place over probs: dS = τ·P∘(dP − D), with dP the f32 scores buffer and D = rowsum(dO∘O) per query.</summary>
    public static void GradScoresKernel<T, S>(ArrayView<float> dp, ArrayView<T> probs, ArrayView<float> dRow, Block blk, long rows, int rowsPerGroup)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        if (!RowOf(rowsPerGroup, rows, out int row, out int lane, out int lanes)) return; // no shuffles here; GradScores works in place
        Locate(blk, row, out int b, out int h, out int i, out _);
        long o = (long)row * blk.KeyEnd;
        float d = dRow[LseIndex(blk, b, h, i)];
        for (int j = lane; j < blk.KeyEnd; j += lanes)
            probs[o + j] = s.Store(s.Load(probs[o + j]) * (dp[o + j] - d) * blk.Scale);
    }

    /// <summary>D[(b·H + h)·T + i] = Σ_d dO·O over head h of token (b, i): per (token, head) row.</summary>
    public static void RowDotKernel<T, S>(ArrayView<T> dO, ArrayView<T> o, ArrayView<float> dRow, int queries, int heads, int headDim, long rows, int rowsPerGroup)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        RowOf(rowsPerGroup, rows, out int r, out int lane, out int lanes);
        int token = r / heads, h = r - token * heads;
        int b = token / queries, i = token - b * queries;
        long at = (long)r * headDim;
        float acc = 0;
        for (int d = lane; d < headDim; d += lanes) acc += s.Load(dO[at + d]) * s.Load(o[at + d]);
        acc = RowSum(acc, rowsPerGroup);
        if (lane == 0) dRow[((long)b * heads + h) * queries + i] = acc;
    }

    public static void RecomputeProbs<T, S>(KernelSet ks, ArrayView<float> scores, ArrayView<T> probs, ArrayView<int> seg, ArrayView<float> lse, Block blk, int batch)
        where T : unmanaged where S : struct, IStorage<T>
    {
        long rows = blk.ScoreRows(batch);
        var (config, rowsPerGroup) = RowsConfig(ks, rows, blk.KeyEnd, reduces: false);
        Action<ArrayView<float>, ArrayView<T>, ArrayView<int>, ArrayView<float>, Block, long, int> kernel = RecomputeProbsKernel<T, S>;
        ks.Load(kernel, a => a.LoadStreamKernel(kernel))(config, scores, probs, seg, lse, blk, rows, rowsPerGroup);
    }

    public static void GradScores<T, S>(KernelSet ks, ArrayView<float> dp, ArrayView<T> probs, ArrayView<float> dRow, Block blk, int batch)
        where T : unmanaged where S : struct, IStorage<T>
    {
        long rows = blk.ScoreRows(batch);
        var (config, rowsPerGroup) = RowsConfig(ks, rows, blk.KeyEnd, reduces: false);
        Action<ArrayView<float>, ArrayView<T>, ArrayView<float>, Block, long, int> kernel = GradScoresKernel<T, S>;
        ks.Load(kernel, a => a.LoadStreamKernel(kernel))(config, dp, probs, dRow, blk, rows, rowsPerGroup);
    }

    public static void RowDot<T, S>(KernelSet ks, ArrayView<T> dO, ArrayView<T> o, ArrayView<float> dRow, int batch, int queries, int heads, int headDim)
        where T : unmanaged where S : struct, IStorage<T>
    {
        long rows = (long)batch * queries * heads;
        if (rows == 0) return;
        var (config, rowsPerGroup) = RowsConfig(ks, rows, headDim, reduces: true);
        Action<ArrayView<T>, ArrayView<T>, ArrayView<float>, int, int, int, long, int> kernel = RowDotKernel<T, S>;
        ks.Load(kernel, a => a.LoadStreamKernel(kernel))(config, dO, o, dRow, queries, heads, headDim, rows, rowsPerGroup);
    }

    /// <summary>
    /// The float64 reference shared by the tests and `selfcheck --kernels`: plain attention with the full score
    /// matrix, and its backward through the softmax Jacobian (checked against finite differences in the tests).
    /// Queries are the last <c>queries</c> of each row's <c>keys</c> positions (query i at key position off + i).
    /// </summary>
    public sealed class Reference
    {
        public double[] O = null!, Dq = null!, Dk = null!, Dv = null!, Lse = null!;

        public static bool Allowed(int[] seg, int b, int Tk, int p, int j) =>
            j <= p && seg[b * Tk + p] >= 0 && seg[b * Tk + j] == seg[b * Tk + p];

        public static Reference Run(double[] q, double[] k, double[] v, int[] seg, double[]? dO, int batch, int queries, int keys, int heads, int kvHeads, int headDim)
        {
            int B = batch, T = queries, Tk = keys, off = keys - queries, H = heads, KV = kvHeads, hd = headDim, G = H / KV;
            double scale = 1 / Math.Sqrt(hd);
            var r = new Reference { O = new double[q.Length], Dq = new double[q.Length], Dk = new double[k.Length], Dv = new double[v.Length], Lse = new double[B * H * T] };
            double Q(int b, int t, int h, int d) => q[((b * T + t) * H + h) * hd + d];
            double K(int b, int t, int g, int d) => k[((b * Tk + t) * KV + g) * hd + d];
            double V(int b, int t, int g, int d) => v[((b * Tk + t) * KV + g) * hd + d];
            for (int b = 0; b < B; b++)
                for (int h = 0; h < H; h++)
                {
                    int g = h / G;
                    var P = new double[T, Tk];
                    for (int i = 0; i < T; i++)
                    {
                        double max = double.NegativeInfinity;
                        var sc = new double[Tk];
                        for (int j = 0; j < Tk; j++)
                        {
                            if (!Allowed(seg, b, Tk, off + i, j)) { sc[j] = double.NegativeInfinity; continue; }
                            double dot = 0;
                            for (int d = 0; d < hd; d++) dot += Q(b, i, h, d) * K(b, j, g, d);
                            sc[j] = dot * scale;
                            max = Math.Max(max, sc[j]);
                        }
                        if (double.IsNegativeInfinity(max)) continue; // a padding query attends nothing: P row 0, output 0, lse 0
                        double sum = 0;
                        for (int j = 0; j < Tk; j++) sum += double.IsNegativeInfinity(sc[j]) ? 0 : Math.Exp(sc[j] - max);
                        r.Lse[(b * H + h) * T + i] = max + Math.Log(sum);
                        for (int j = 0; j < Tk; j++) P[i, j] = double.IsNegativeInfinity(sc[j]) ? 0 : Math.Exp(sc[j] - max) / sum;
                        for (int d = 0; d < hd; d++)
                        {
                            double o = 0;
                            for (int j = 0; j < Tk; j++) o += P[i, j] * V(b, j, g, d);
                            r.O[((b * T + i) * H + h) * hd + d] = o;
                        }
                    }
                    if (dO == null) continue;
                    double DO(int t, int d) => dO[((b * T + t) * H + h) * hd + d];
                    for (int i = 0; i < T; i++)
                    {
                        // dP_ij = dO_i·V_j; dS_ij = P_ij (dP_ij − Σ_l P_il dP_il)  (softmax Jacobian)
                        var dP = new double[Tk];
                        double rowDot = 0;
                        for (int j = 0; j < Tk; j++)
                        {
                            for (int d = 0; d < hd; d++) dP[j] += DO(i, d) * V(b, j, g, d);
                            rowDot += P[i, j] * dP[j];
                        }
                        for (int j = 0; j < Tk; j++)
                        {
                            double dS = P[i, j] * (dP[j] - rowDot) * scale;
                            for (int d = 0; d < hd; d++)
                            {
                                r.Dq[((b * T + i) * H + h) * hd + d] += dS * K(b, j, g, d);
                                r.Dk[((b * Tk + j) * KV + g) * hd + d] += dS * Q(b, i, h, d);
                                r.Dv[((b * Tk + j) * KV + g) * hd + d] += P[i, j] * DO(i, d);
                            }
                        }
                    }
                }
            return r;
        }
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
        ks.Launch(DecodeKernel<T, S>, batch * heads, q, kCache, vCache, lengths, pageTable, o, heads, kvHeads, headDim, maxPages, pageSize, scale);
    }
}
