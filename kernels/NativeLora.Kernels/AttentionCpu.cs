using System.Numerics.Tensors;

namespace NativeLora.Kernels;

/// <summary>
/// The CPU variant of <see cref="Attention"/>'s row kernels (the math and layouts are documented there):
/// host SIMD over the CPU accelerator's memory, score rows over cores. A query's allowed keys are the
/// j ≤ p of its own segment; when that segment is one contiguous run of positions (packed sequences and
/// padding always are) the row is one SIMD range, otherwise the row falls back to a masked scalar loop.
/// </summary>
public static class AttentionCpu
{
    /// <summary>Per key position of each batch row: where its segment's run starts, or −1 when the row must be masked element by element (segment −1, or an id that also appears before the run).</summary>
    private static int[] RunStarts(ReadOnlySpan<int> seg, int batch, int keys)
    {
        var start = new int[batch * keys];
        var seen = new HashSet<int>();
        for (int b = 0; b < batch; b++)
        {
            seen.Clear();
            int o = b * keys;
            for (int p = 0; p < keys; p++)
            {
                int id = seg[o + p];
                bool continues = p > 0 && seg[o + p - 1] == id;
                if (!continues && !seen.Add(id)) { start[o + p] = -1; continue; } // the id came back after another: not one run
                start[o + p] = id < 0 ? -1 : continues ? start[o + p - 1] : p;
                if (continues && start[o + p - 1] < 0) start[o + p] = -1;
            }
        }
        return start;
    }

    private static bool Allowed(ReadOnlySpan<int> seg, long keyBase, int segI, int j, int p) => j <= p && segI >= 0 && seg[(int)(keyBase + j)] == segI;

    /// <summary>dst [B, Y, X, C] ← src [B, X, Y, C], converting the element type.</summary>
    public static void Permute<TI, SI, TO, SO>(HostView<TI> src, HostView<TO> dst, int x, int y, int c)
        where TI : unmanaged where SI : struct, IStorage<TI> where TO : unmanaged where SO : struct, IStorage<TO>
    {
        long rows = dst.Length / c;
        HostLoop.For(rows, Math.Max(1, 16384 / c), (r0, r1) =>
        {
            var buf = HostScratch.Floats(0, c);
            for (long r = r0; r < r1; r++)
            {
                long rest2 = r / x;
                int xx = (int)(r - rest2 * x);
                long b = rest2 / y;
                int yy = (int)(rest2 - b * y);
                var from = src.Slice(((b * x + xx) * y + yy) * c, c);
                HostFloats.Narrow<TO, SO>(HostFloats.Read<TI, SI>(from, buf), dst.Slice(r * c, c));
            }
        });
    }

    /// <summary>probs = masked softmax(τ·scores) over the block's rows; writes lse of its queries (as <see cref="Attention.Softmax{T,S}"/>).</summary>
    public static void Softmax<T, S>(HostView<float> scores, HostView<T> probs, HostView<int> seg, HostView<float> lse, Attention.Block blk, int batch)
        where T : unmanaged where S : struct, IStorage<T> =>
        MaskedExp<T, S>(scores, probs, seg, lse, blk, batch, recompute: false);

    /// <summary>P = exp(τ·S − lse), masked (as <see cref="Attention.RecomputeProbs{T,S}"/>).</summary>
    public static void RecomputeProbs<T, S>(HostView<float> scores, HostView<T> probs, HostView<int> seg, HostView<float> lse, Attention.Block blk, int batch)
        where T : unmanaged where S : struct, IStorage<T> =>
        MaskedExp<T, S>(scores, probs, seg, lse, blk, batch, recompute: true);

    // P = exp(τ·S − lse) over each row's allowed keys, 0 elsewhere; the forward finds lse (and writes it), the backward reads it
    private static void MaskedExp<T, S>(HostView<float> scores, HostView<T> probs, HostView<int> seg, HostView<float> lse, Attention.Block blk, int batch, bool recompute)
        where T : unmanaged where S : struct, IStorage<T>
    {
        var starts = RunStarts(seg.Span, batch, blk.Keys);
        int width = blk.KeyEnd;
        HostLoop.For(blk.ScoreRows(batch), Math.Max(1, 16384 / width), (r0, r1) =>
        {
            var e = HostScratch.Floats(0, width);
            var segs = seg.Span;
            for (long row = r0; row < r1; row++)
            {
                Attention.Locate(blk, (int)row, out int b, out int h, out int i, out int p);
                long keyBase = (long)b * blk.Keys;
                int segI = segs[(int)(keyBase + p)];
                long lseAt = Attention.LseIndex(blk, b, h, i);
                var sc = scores.Slice(row * width, width);
                e.Clear();
                float rowLse = recompute ? lse.Span[(int)lseAt] : 0f;
                int lo = segI < 0 ? -1 : starts[keyBase + p];
                if (lo >= 0)
                {
                    var run = e[lo..(p + 1)];
                    TensorPrimitives.Multiply(sc[lo..(p + 1)], blk.Scale, run);
                    if (!recompute)
                    {
                        float m = TensorPrimitives.Max(run);
                        TensorPrimitives.Subtract(run, m, run);
                        TensorPrimitives.Exp(run, run);
                        float sum = TensorPrimitives.Sum(run);
                        rowLse = m + MathF.Log(sum);
                        TensorPrimitives.Multiply(run, 1f / sum, run);
                    }
                    else
                    {
                        TensorPrimitives.Subtract(run, rowLse, run);
                        TensorPrimitives.Exp(run, run);
                    }
                }
                else if (segI >= 0)
                {
                    if (!recompute)
                    {
                        float m = float.NegativeInfinity, sum = 0;
                        for (int j = 0; j <= p; j++) if (Allowed(segs, keyBase, segI, j, p)) m = MathF.Max(m, sc[j] * blk.Scale);
                        for (int j = 0; j <= p; j++) if (Allowed(segs, keyBase, segI, j, p)) sum += MathF.Exp(sc[j] * blk.Scale - m);
                        rowLse = m + MathF.Log(sum);
                    }
                    for (int j = 0; j <= p; j++) if (Allowed(segs, keyBase, segI, j, p)) e[j] = MathF.Exp(sc[j] * blk.Scale - rowLse);
                }
                HostFloats.Narrow<T, S>(e, probs.Slice(row * width, width));
                if (!recompute) lse.Span[(int)lseAt] = rowLse;
            }
        });
    }

    /// <summary>In place over probs: dS = τ·P∘(dP − D) (as <see cref="Attention.GradScores{T,S}"/>).</summary>
    public static void GradScores<T, S>(HostView<float> dp, HostView<T> probs, HostView<float> dRow, Attention.Block blk, int batch)
        where T : unmanaged where S : struct, IStorage<T>
    {
        int width = blk.KeyEnd;
        HostLoop.For(blk.ScoreRows(batch), Math.Max(1, 16384 / width), (r0, r1) =>
        {
            var pBuf = HostScratch.Floats(0, width);
            var t = HostScratch.Floats(1, width);
            for (long row = r0; row < r1; row++)
            {
                Attention.Locate(blk, (int)row, out int b, out int h, out int i, out _);
                float d = dRow.Span[(int)Attention.LseIndex(blk, b, h, i)];
                var pr = probs.Slice(row * width, width);
                var ps = HostFloats.Read<T, S>(pr, pBuf);
                TensorPrimitives.Subtract(dp.Slice(row * width, width), d, t);
                TensorPrimitives.Multiply(t, ps, t);
                TensorPrimitives.Multiply(t, blk.Scale, t);
                HostFloats.Narrow<T, S>(t, pr);
            }
        });
    }

    /// <summary>D[(b·H + h)·T + i] = Σ_d dO·O per (token, head) (as <see cref="Attention.RowDot{T,S}"/>).</summary>
    public static void RowDot<T, S>(HostView<T> dO, HostView<T> o, HostView<float> dRow, int batch, int queries, int heads, int headDim)
        where T : unmanaged where S : struct, IStorage<T>
    {
        long n = (long)batch * queries * heads;
        HostLoop.For(n, Math.Max(1, 16384 / headDim), (r0, r1) =>
        {
            var a = HostScratch.Floats(0, headDim);
            var c = HostScratch.Floats(1, headDim);
            for (long r = r0; r < r1; r++)
            {
                long token = r / heads;
                int h = (int)(r - token * heads);
                long b = token / queries;
                int i = (int)(token - b * queries);
                dRow.Span[(int)((b * heads + h) * queries + i)] =
                    TensorPrimitives.Dot(HostFloats.Read<T, S>(dO.Slice(r * headDim, headDim), a), HostFloats.Read<T, S>(o.Slice(r * headDim, headDim), c));
            }
        });
    }

    /// <summary>One new query per row against its paged KV cache, online softmax (as <see cref="Attention.Decode{T,S}"/>); (row, head) pairs over cores.</summary>
    public static void Decode<T, S>(HostView<T> q, HostView<T> kCache, HostView<T> vCache, HostView<int> lengths, HostView<int> pageTable, HostView<T> o,
        int batch, int heads, int kvHeads, int headDim, int maxPages, int pageSize, float scale)
        where T : unmanaged where S : struct, IStorage<T>
    {
        HostLoop.For((long)batch * heads, 1, (i0, i1) =>
        {
            var qb = HostScratch.Floats(0, headDim);
            var kb = HostScratch.Floats(1, headDim);
            var vb = HostScratch.Floats(2, headDim);
            var acc = HostScratch.Floats(3, headDim);
            for (long idx = i0; idx < i1; idx++)
            {
                int b = (int)(idx / heads), h = (int)(idx - (long)b * heads);
                int g = h / (heads / kvHeads);
                int len = lengths.Span[b];
                long qBase = (long)b * heads * headDim + (long)h * headDim;
                long kvStride = (long)kvHeads * headDim;
                var qs = HostFloats.Read<T, S>(q.Slice(qBase, headDim), qb);
                acc.Clear();
                float m = float.NegativeInfinity, l = 0;
                for (int t = 0; t < len; t++)
                {
                    int page = pageTable.Span[b * maxPages + t / pageSize];
                    long kBase = ((long)page * pageSize + t % pageSize) * kvStride + (long)g * headDim;
                    float sc = TensorPrimitives.Dot(qs, HostFloats.Read<T, S>(kCache.Slice(kBase, headDim), kb)) * scale;
                    float mNew = MathF.Max(m, sc);
                    float corr = m == float.NegativeInfinity ? 0f : MathF.Exp(m - mNew);
                    float p = MathF.Exp(sc - mNew);
                    l = l * corr + p;
                    TensorPrimitives.Multiply(acc, corr, acc);
                    TensorPrimitives.MultiplyAdd(HostFloats.Read<T, S>(vCache.Slice(kBase, headDim), vb), p, acc, acc);
                    m = mNew;
                }
                TensorPrimitives.Multiply(acc, l > 0 ? 1f / l : 0f, acc);
                HostFloats.Narrow<T, S>(acc, o.Slice(qBase, headDim));
            }
        });
    }
}
