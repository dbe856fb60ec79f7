using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace NativeLora.Kernels;

/// <summary>
/// Causal self-attention with grouped-query attention and a segment mask.
///
/// Layout: q, o [B·T, H·hd]; k, v [B·T, KV·hd]; head h reads kv head h / (H/KV). Per batch row b,
/// query i may attend key j iff j ≤ i, seg[j] = seg[i] and seg[i] ≥ 0. Packed sequences give each
/// sequence its own segment id (positions restart in RoPE, attention never crosses a boundary);
/// padding tokens get −1 (masked as keys; as queries they output zeros). lse[(b·H+h)·T+i] is the
/// row's log-sum-exp of the scaled scores, saved for the backward, which recomputes
/// P = exp(s·scale − lse) instead of storing it. With D_i = Σ_d dO[i,d]·O[i,d]:
///   dV = Pᵀ·dO,  dS = P ∘ (dO·Vᵀ − D),  dQ = scale·dS·K,  dK = scale·dSᵀ·Q   (summed over a kv head's query heads).
///
/// GPU variant (flash-style): one group per (b, h, tile of query rows), one thread per query row;
/// K/V tiles are staged in shared memory and the softmax is computed online, so the T×T matrix never
/// exists. The backward is two kernels: dQ per query row (which also saves D), then dK/dV per key row
/// looping over the query heads of its kv head — no atomics, deterministic.
/// CPU variant: the products are batched GEMMs in the native core (the caller composes them) and the
/// kernels here do the row-wise parts: masked softmax with lse, probability recompute, and dS.
/// </summary>
public static class Attention
{
    public const int MaxHeadDim = 256;
    public const int MaxTile = 64;

    private static bool Allowed(ArrayView<int> seg, long rowBase, int i, int j, int segI) =>
        j <= i && segI >= 0 && seg[rowBase + j] == segI;

    // ---------------------------------------------------------------- GPU variant: forward

    public static void FlashForwardKernel<T, S>(ArrayView<T> q, ArrayView<T> k, ArrayView<T> v, ArrayView<int> seg,
        ArrayView<T> o, ArrayView<float> lse, int seqLen, int heads, int kvHeads, int headDim, float scale)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        int tile = Group.DimX;
        var sh = SharedMemory.GetDynamic<float>(); // [K tile | V tile], each [tile, headDim]
        var qi = LocalMemory.Allocate<float>(MaxHeadDim);
        var acc = LocalMemory.Allocate<float>(MaxHeadDim);
        var scores = LocalMemory.Allocate<float>(MaxTile);

        int queryBlocks = (seqLen + tile - 1) / tile;
        int bh = Grid.IdxX / queryBlocks;
        int qb = Grid.IdxX - bh * queryBlocks;
        int b = bh / heads, h = bh - b * heads;
        int kvh = h / (heads / kvHeads);
        int i = qb * tile + Group.IdxX;
        long rowBase = (long)b * seqLen;
        int qStride = heads * headDim, kvStride = kvHeads * headDim;
        bool valid = i < seqLen;
        int segI = valid ? seg[rowBase + i] : -1;
        bool active = valid && segI >= 0;

        if (active)
            for (int d = 0; d < headDim; d++) qi[d] = s.Load(q[(rowBase + i) * qStride + h * headDim + d]);
        for (int d = 0; d < headDim; d++) acc[d] = 0;
        float m = float.NegativeInfinity, l = 0;

        int keyEnd = XMath.Min(seqLen, (qb + 1) * tile); // causal: no key past the block's last query
        for (int k0 = 0; k0 < keyEnd; k0 += tile)
        {
            int jLoad = k0 + Group.IdxX;
            for (int d = 0; d < headDim; d++)
            {
                bool inRange = jLoad < seqLen;
                long src = (rowBase + jLoad) * kvStride + kvh * headDim + d;
                sh[Group.IdxX * headDim + d] = inRange ? s.Load(k[src]) : 0f;
                sh[(tile + Group.IdxX) * headDim + d] = inRange ? s.Load(v[src]) : 0f;
            }
            Group.Barrier();
            if (active)
            {
                float tileMax = float.NegativeInfinity;
                for (int jj = 0; jj < tile; jj++)
                {
                    int j = k0 + jj;
                    float sc = float.NegativeInfinity;
                    if (j < seqLen && Allowed(seg, rowBase, i, j, segI))
                    {
                        float dot = 0;
                        for (int d = 0; d < headDim; d++) dot += qi[d] * sh[jj * headDim + d];
                        sc = dot * scale;
                    }
                    scores[jj] = sc;
                    tileMax = XMath.Max(tileMax, sc);
                }
                if (tileMax > float.NegativeInfinity)
                {
                    float mNew = XMath.Max(m, tileMax);
                    float corr = m == float.NegativeInfinity ? 0f : XMath.Exp(m - mNew);
                    l *= corr;
                    for (int d = 0; d < headDim; d++) acc[d] *= corr;
                    for (int jj = 0; jj < tile; jj++)
                    {
                        if (scores[jj] == float.NegativeInfinity) continue;
                        float p = XMath.Exp(scores[jj] - mNew);
                        l += p;
                        for (int d = 0; d < headDim; d++) acc[d] += p * sh[(tile + jj) * headDim + d];
                    }
                    m = mNew;
                }
            }
            Group.Barrier();
        }

        if (valid)
        {
            long oBase = (rowBase + i) * qStride + h * headDim;
            float inv = l > 0 ? 1f / l : 0f;
            for (int d = 0; d < headDim; d++) o[oBase + d] = s.Store(acc[d] * inv);
            lse[(long)bh * seqLen + i] = l > 0 ? m + XMath.Log(l) : 0f;
        }
    }

    // ---------------------------------------------------------------- GPU variant: backward

    /// <summary>dQ per query row; also writes D_i = Σ dO·O for the dK/dV kernel.</summary>
    public static void FlashBackwardDqKernel<T, S>(ArrayView<T> q, ArrayView<T> k, ArrayView<T> v, ArrayView<int> seg,
        ArrayView<T> o, ArrayView<T> dO, ArrayView<float> lse, ArrayView<float> dRow, ArrayView<T> dq,
        int seqLen, int heads, int kvHeads, int headDim, float scale)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        int tile = Group.DimX;
        var sh = SharedMemory.GetDynamic<float>();
        var qi = LocalMemory.Allocate<float>(MaxHeadDim);
        var doi = LocalMemory.Allocate<float>(MaxHeadDim);
        var acc = LocalMemory.Allocate<float>(MaxHeadDim);

        int queryBlocks = (seqLen + tile - 1) / tile;
        int bh = Grid.IdxX / queryBlocks;
        int qb = Grid.IdxX - bh * queryBlocks;
        int b = bh / heads, h = bh - b * heads;
        int kvh = h / (heads / kvHeads);
        int i = qb * tile + Group.IdxX;
        long rowBase = (long)b * seqLen;
        int qStride = heads * headDim, kvStride = kvHeads * headDim;
        bool valid = i < seqLen;
        int segI = valid ? seg[rowBase + i] : -1;
        bool active = valid && segI >= 0;
        long qBase = (rowBase + i) * qStride + h * headDim;

        float di = 0, lsei = 0;
        if (active)
        {
            for (int d = 0; d < headDim; d++)
            {
                qi[d] = s.Load(q[qBase + d]);
                doi[d] = s.Load(dO[qBase + d]);
                di += doi[d] * s.Load(o[qBase + d]);
            }
            lsei = lse[(long)bh * seqLen + i];
        }
        if (valid) dRow[(long)bh * seqLen + i] = di;
        for (int d = 0; d < headDim; d++) acc[d] = 0;

        int keyEnd = XMath.Min(seqLen, (qb + 1) * tile);
        for (int k0 = 0; k0 < keyEnd; k0 += tile)
        {
            int jLoad = k0 + Group.IdxX;
            for (int d = 0; d < headDim; d++)
            {
                bool inRange = jLoad < seqLen;
                long src = (rowBase + jLoad) * kvStride + kvh * headDim + d;
                sh[Group.IdxX * headDim + d] = inRange ? s.Load(k[src]) : 0f;
                sh[(tile + Group.IdxX) * headDim + d] = inRange ? s.Load(v[src]) : 0f;
            }
            Group.Barrier();
            if (active)
            {
                for (int jj = 0; jj < tile; jj++)
                {
                    int j = k0 + jj;
                    if (j >= seqLen || !Allowed(seg, rowBase, i, j, segI)) continue;
                    float dot = 0, dp = 0;
                    for (int d = 0; d < headDim; d++)
                    {
                        dot += qi[d] * sh[jj * headDim + d];
                        dp += doi[d] * sh[(tile + jj) * headDim + d];
                    }
                    float p = XMath.Exp(dot * scale - lsei);
                    float ds = p * (dp - di);
                    for (int d = 0; d < headDim; d++) acc[d] += ds * sh[jj * headDim + d];
                }
            }
            Group.Barrier();
        }
        if (valid)
            for (int d = 0; d < headDim; d++) dq[qBase + d] = s.Store(acc[d] * scale);
    }

    /// <summary>dK, dV per key row, summing over the query heads that share its kv head.</summary>
    public static void FlashBackwardDkDvKernel<T, S>(ArrayView<T> q, ArrayView<T> k, ArrayView<T> v, ArrayView<int> seg,
        ArrayView<T> dO, ArrayView<float> lse, ArrayView<float> dRow, ArrayView<T> dk, ArrayView<T> dv,
        int seqLen, int heads, int kvHeads, int headDim, float scale)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        int tile = Group.DimX;
        var sh = SharedMemory.GetDynamic<float>(); // [Q tile | dO tile]
        var kj = LocalMemory.Allocate<float>(MaxHeadDim);
        var vj = LocalMemory.Allocate<float>(MaxHeadDim);
        var dkAcc = LocalMemory.Allocate<float>(MaxHeadDim);
        var dvAcc = LocalMemory.Allocate<float>(MaxHeadDim);

        int keyBlocks = (seqLen + tile - 1) / tile;
        int bg = Grid.IdxX / keyBlocks;
        int kb = Grid.IdxX - bg * keyBlocks;
        int b = bg / kvHeads, kvh = bg - b * kvHeads;
        int group = heads / kvHeads;
        int j = kb * tile + Group.IdxX;
        long rowBase = (long)b * seqLen;
        int qStride = heads * headDim, kvStride = kvHeads * headDim;
        bool valid = j < seqLen;
        int segJ = valid ? seg[rowBase + j] : -1;
        bool active = valid && segJ >= 0;
        long kBase = (rowBase + j) * kvStride + kvh * headDim;

        for (int d = 0; d < headDim; d++)
        {
            kj[d] = active ? s.Load(k[kBase + d]) : 0f;
            vj[d] = active ? s.Load(v[kBase + d]) : 0f;
            dkAcc[d] = 0;
            dvAcc[d] = 0;
        }

        for (int r = 0; r < group; r++)
        {
            int h = kvh * group + r;
            long lseBase = ((long)b * heads + h) * seqLen;
            for (int q0 = kb * tile; q0 < seqLen; q0 += tile) // queries before the key block never see it
            {
                int iLoad = q0 + Group.IdxX;
                for (int d = 0; d < headDim; d++)
                {
                    bool inRange = iLoad < seqLen;
                    long src = (rowBase + iLoad) * qStride + h * headDim + d;
                    sh[Group.IdxX * headDim + d] = inRange ? s.Load(q[src]) : 0f;
                    sh[(tile + Group.IdxX) * headDim + d] = inRange ? s.Load(dO[src]) : 0f;
                }
                Group.Barrier();
                if (active)
                {
                    for (int ii = 0; ii < tile; ii++)
                    {
                        int i = q0 + ii;
                        if (i >= seqLen || i < j || seg[rowBase + i] != segJ) continue;
                        float dot = 0, dp = 0;
                        for (int d = 0; d < headDim; d++)
                        {
                            dot += sh[ii * headDim + d] * kj[d];
                            dp += sh[(tile + ii) * headDim + d] * vj[d];
                        }
                        float p = XMath.Exp(dot * scale - lse[lseBase + i]);
                        float ds = p * (dp - dRow[lseBase + i]);
                        for (int d = 0; d < headDim; d++)
                        {
                            dvAcc[d] += p * sh[(tile + ii) * headDim + d];
                            dkAcc[d] += ds * sh[ii * headDim + d];
                        }
                    }
                }
                Group.Barrier();
            }
        }
        if (valid)
            for (int d = 0; d < headDim; d++)
            {
                dk[kBase + d] = s.Store(dkAcc[d] * scale);
                dv[kBase + d] = s.Store(dvAcc[d]);
            }
    }

    public static void FlashForward<T, S>(KernelSet ks, ArrayView<T> q, ArrayView<T> k, ArrayView<T> v, ArrayView<int> seg,
        ArrayView<T> o, ArrayView<float> lse, int batch, int seqLen, int heads, int kvHeads, int headDim, float scale)
        where T : unmanaged where S : struct, IStorage<T>
    {
        var config = FlashConfig(ks, batch * heads, seqLen, headDim);
        Action<ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<int>, ArrayView<T>, ArrayView<float>, int, int, int, int, float> kernel = FlashForwardKernel<T, S>;
        ks.Load(kernel, a => a.LoadStreamKernel(kernel))(config, q, k, v, seg, o, lse, seqLen, heads, kvHeads, headDim, scale);
    }

    /// <summary>dRow is [B·H·T] scratch. dq, dk, dv are overwritten.</summary>
    public static void FlashBackward<T, S>(KernelSet ks, ArrayView<T> q, ArrayView<T> k, ArrayView<T> v, ArrayView<int> seg,
        ArrayView<T> o, ArrayView<T> dO, ArrayView<float> lse, ArrayView<float> dRow, ArrayView<T> dq, ArrayView<T> dk, ArrayView<T> dv,
        int batch, int seqLen, int heads, int kvHeads, int headDim, float scale)
        where T : unmanaged where S : struct, IStorage<T>
    {
        var dqConfig = FlashConfig(ks, batch * heads, seqLen, headDim);
        Action<ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<int>, ArrayView<T>, ArrayView<T>, ArrayView<float>, ArrayView<float>, ArrayView<T>, int, int, int, int, float> dqKernel = FlashBackwardDqKernel<T, S>;
        ks.Load(dqKernel, a => a.LoadStreamKernel(dqKernel))(dqConfig, q, k, v, seg, o, dO, lse, dRow, dq, seqLen, heads, kvHeads, headDim, scale);
        var kvConfig = FlashConfig(ks, batch * kvHeads, seqLen, headDim);
        Action<ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<int>, ArrayView<T>, ArrayView<float>, ArrayView<float>, ArrayView<T>, ArrayView<T>, int, int, int, int, float> kvKernel = FlashBackwardDkDvKernel<T, S>;
        ks.Load(kvKernel, a => a.LoadStreamKernel(kvKernel))(kvConfig, q, k, v, seg, dO, lse, dRow, dk, dv, seqLen, heads, kvHeads, headDim, scale);
    }

    private static KernelConfig FlashConfig(KernelSet ks, int rowsOfBlocks, int seqLen, int headDim)
    {
        if (headDim > MaxHeadDim) throw new ArgumentException($"head dimension {headDim} exceeds the attention kernel's maximum {MaxHeadDim}");
        int tile = Math.Min(ks.AttentionTile, MaxTile);
        int blocks = (seqLen + tile - 1) / tile;
        return new KernelConfig(rowsOfBlocks * blocks, tile, SharedMemoryConfig.RequestDynamic<float>(2 * tile * headDim));
    }

    // ---------------------------------------------------------------- CPU variant: row kernels

    /// <summary>
    /// scores: [B, T, T] f32 = Q_h·K_gᵀ for one head h (unscaled). In place: P = masked softmax(scale·scores);
    /// writes lse for head h. One thread per (b, i) row.
    /// </summary>
    public static void SoftmaxRowKernel(Index1D row, ArrayView<float> scores, ArrayView<int> seg, ArrayView<float> lse,
        int seqLen, int heads, int h, float scale)
    {
        int b = row / seqLen, i = row - b * seqLen;
        long rowBase = (long)b * seqLen;
        long o = (long)(int)row * seqLen;
        int segI = seg[rowBase + i];
        float m = float.NegativeInfinity;
        for (int j = 0; j <= i; j++)
            if (Allowed(seg, rowBase, i, j, segI)) m = XMath.Max(m, scores[o + j] * scale);
        float sum = 0;
        for (int j = 0; j <= i; j++)
            if (Allowed(seg, rowBase, i, j, segI)) sum += XMath.Exp(scores[o + j] * scale - m);
        float rowLse = sum > 0 ? m + XMath.Log(sum) : 0f;
        for (int j = 0; j < seqLen; j++)
            scores[o + j] = sum > 0 && j <= i && Allowed(seg, rowBase, i, j, segI) ? XMath.Exp(scores[o + j] * scale - rowLse) : 0f;
        lse[((long)b * heads + h) * seqLen + i] = rowLse;
    }

    /// <summary>In place: scores → P = exp(scale·scores − lse), masked; for the backward.</summary>
    public static void RecomputeProbsRowKernel(Index1D row, ArrayView<float> scores, ArrayView<int> seg, ArrayView<float> lse,
        int seqLen, int heads, int h, float scale)
    {
        int b = row / seqLen, i = row - b * seqLen;
        long rowBase = (long)b * seqLen;
        long o = (long)(int)row * seqLen;
        int segI = seg[rowBase + i];
        float rowLse = lse[((long)b * heads + h) * seqLen + i];
        for (int j = 0; j < seqLen; j++)
            scores[o + j] = j <= i && Allowed(seg, rowBase, i, j, segI) ? XMath.Exp(scores[o + j] * scale - rowLse) : 0f;
    }

    /// <summary>In place: dp (= dO·Vᵀ) → dS·scale = P ∘ (dp − D_i)·scale, with D_i = Σ_d dO·O of head h.</summary>
    public static void GradScoresRowKernel(Index1D row, ArrayView<float> probs, ArrayView<float> dp, ArrayView<float> o, ArrayView<float> dO,
        int seqLen, int heads, int headDim, int h, float scale)
    {
        long stride = (long)heads * headDim;
        long qBase = row * stride + (long)h * headDim;
        float di = 0;
        for (int d = 0; d < headDim; d++) di += dO[qBase + d] * o[qBase + d];
        long r = (long)(int)row * seqLen;
        for (int j = 0; j < seqLen; j++) dp[r + j] = probs[r + j] * (dp[r + j] - di) * scale;
    }

    public static void SoftmaxRows(KernelSet ks, ArrayView<float> scores, ArrayView<int> seg, ArrayView<float> lse, int batch, int seqLen, int heads, int h, float scale)
    {
        Action<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int, int, float> kernel = SoftmaxRowKernel;
        ks.Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(batch * seqLen, scores, seg, lse, seqLen, heads, h, scale);
    }

    public static void RecomputeProbsRows(KernelSet ks, ArrayView<float> scores, ArrayView<int> seg, ArrayView<float> lse, int batch, int seqLen, int heads, int h, float scale)
    {
        Action<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int, int, float> kernel = RecomputeProbsRowKernel;
        ks.Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(batch * seqLen, scores, seg, lse, seqLen, heads, h, scale);
    }

    public static void GradScoresRows(KernelSet ks, ArrayView<float> probs, ArrayView<float> dp, ArrayView<float> o, ArrayView<float> dO, int batch, int seqLen, int heads, int headDim, int h, float scale)
    {
        Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, float> kernel = GradScoresRowKernel;
        ks.Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(batch * seqLen, probs, dp, o, dO, seqLen, heads, headDim, h, scale);
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
