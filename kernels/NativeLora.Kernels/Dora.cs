using ILGPU;
using ILGPU.Algorithms;

namespace NativeLora.Kernels;

/// <summary>
/// Kernels of DoRA (weight-decomposed LoRA): row norms, the forward's combine, the magnitude gradient
/// (one thread per output column, rows in order: deterministic), column and row scaling. The formulas,
/// their derivation and the order they run in are in managed/NativeLora/Ops/DoraOp.cs.
/// </summary>
public static class Dora
{
    // wn[o] = ‖w[o, :]‖₂ over rows of a [rows, cols] matrix
    public static void RowNormKernel<T, S>(Index1D o, ArrayView<T> w, ArrayView<float> norms, int cols)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        float acc = 0;
        for (int i = 0; i < cols; i++) { float v = s.Load(w[(long)(int)o * cols + i]); acc += v * v; }
        norms[o] = XMath.Sqrt(acc);
    }

    // y += (g−1)·bd + g·l ;  l ← bd + l (kept for dm)
    public static void CombineKernel<T, S>(Index1D t, ArrayView<T> y, ArrayView<T> bd, ArrayView<T> l, ArrayView<float> g, int cols, long n, long chunk)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        long end = Math.Min(n, (t + 1L) * chunk);
        for (long i = t * chunk; i < end; i++)
        {
            float gi = g[i % cols], b = s.Load(bd[i]), lv = s.Load(l[i]);
            y[i] = s.Store(s.Load(y[i]) + (gi - 1f) * b + gi * lv);
            l[i] = s.Store(b + lv);
        }
    }

    // dm[o] += Σ_n dy[n,o]·pre[n,o] / wn[o]
    public static void MagnitudeGradKernel<T, S>(Index1D o, ArrayView<T> dy, ArrayView<T> pre, ArrayView<float> wn, ArrayView<float> dm, int rows, int cols)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        float acc = 0;
        for (int r = 0; r < rows; r++) { long i = (long)r * cols + o; acc += s.Load(dy[i]) * s.Load(pre[i]); }
        dm[o] += acc / wn[o];
    }

    // dst[n,o] = (g[o] + offset)·src[n,o]
    public static void ScaleColumnsKernel<T, S>(Index1D t, ArrayView<T> src, ArrayView<T> dst, ArrayView<float> g, float offset, int cols, long n, long chunk)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        long end = Math.Min(n, (t + 1L) * chunk);
        for (long i = t * chunk; i < end; i++) dst[i] = s.Store((g[i % cols] + offset) * s.Load(src[i]));
    }

    // w[o, :] *= g[o]: the merged DoRA weight m/‖W‖ · W
    public static void ScaleRowsKernel(Index1D t, ArrayView<float> w, ArrayView<float> g, int cols, long n, long chunk)
    {
        long end = Math.Min(n, (t + 1L) * chunk);
        for (long i = t * chunk; i < end; i++) w[i] *= g[i / cols];
    }

    public static void ScaleRows(KernelSet k, ArrayView<float> w, ArrayView<float> g, int cols)
    {
        var (threads, chunk) = k.ElementLaunch(w.Length);
        if (threads > 0) k.Launch(ScaleRowsKernel, threads, w, g, cols, w.Length, chunk);
    }

    // g = m / wn
    public static void RatioKernel(Index1D o, ArrayView<float> m, ArrayView<float> wn, ArrayView<float> g) => g[o] = m[o] / wn[o];

    public static void RowNorms<T, S>(KernelSet k, ArrayView<T> w, ArrayView<float> norms, int rows, int cols)
        where T : unmanaged where S : struct, IStorage<T>
    {
        k.Launch(RowNormKernel<T, S>, rows, w, norms, cols);
    }

    public static void Combine<T, S>(KernelSet k, ArrayView<T> y, ArrayView<T> bd, ArrayView<T> l, ArrayView<float> g, int cols)
        where T : unmanaged where S : struct, IStorage<T>
    {
        var (threads, chunk) = k.ElementLaunch(y.Length);
        if (threads > 0) k.Launch(CombineKernel<T, S>, threads, y, bd, l, g, cols, y.Length, chunk);
    }

    public static void MagnitudeGrad<T, S>(KernelSet k, ArrayView<T> dy, ArrayView<T> pre, ArrayView<float> wn, ArrayView<float> dm, int rows, int cols)
        where T : unmanaged where S : struct, IStorage<T>
    {
        k.Launch(MagnitudeGradKernel<T, S>, cols, dy, pre, wn, dm, rows, cols);
    }

    public static void ScaleColumns<T, S>(KernelSet k, ArrayView<T> src, ArrayView<T> dst, ArrayView<float> g, float offset, int cols)
        where T : unmanaged where S : struct, IStorage<T>
    {
        var (threads, chunk) = k.ElementLaunch(src.Length);
        if (threads > 0) k.Launch(ScaleColumnsKernel<T, S>, threads, src, dst, g, offset, cols, src.Length, chunk);
    }

    public static void Ratio(KernelSet k, ArrayView<float> m, ArrayView<float> wn, ArrayView<float> g)
    {
        k.Launch(RatioKernel, (int)m.Length, m, wn, g);
    }
}
