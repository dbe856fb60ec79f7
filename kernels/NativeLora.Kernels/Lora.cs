using ILGPU;
using ILGPU.Runtime;

namespace NativeLora.Kernels;

/// <summary>
/// Kernels of LoRA's low-rank path: dropout with hashed masks (forward and backward) and the GPU
/// variant's fused down-projection and dx. The formulas, their derivation and the order they run in
/// are in managed/NativeLora/Ops/LoraOp.cs (u = dropout(x), z = u·Aᵀ).
/// </summary>
public static class Lora
{
    /// <summary>Keep-or-drop for element i of a dropout with probability p, from a 64-bit mix of (seed, i).</summary>
    public static bool Keep(ulong seed, long i, float p) => Elementwise.Uniform01(seed, i) >= p;

    // u = dropout(x): kept elements scaled by 1/(1−p)
    public static void DropoutKernel<T, S>(Index1D t, ArrayView<T> x, ArrayView<T> u, ulong seed, float p, long n, long chunk)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        float scale = 1f / (1f - p);
        long end = Math.Min(n, (t + 1L) * chunk);
        for (long i = t * chunk; i < end; i++) u[i] = Keep(seed, i, p) ? s.Store(s.Load(x[i]) * scale) : s.Store(0f);
    }

    // dx += dropoutᵀ(g): the gradient reaching u flows back through kept elements only
    public static void DropoutBackwardKernel<T, S>(Index1D t, ArrayView<T> g, ArrayView<T> dx, ulong seed, float p, long n, long chunk)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        float scale = 1f / (1f - p);
        long end = Math.Min(n, (t + 1L) * chunk);
        for (long i = t * chunk; i < end; i++)
            if (Keep(seed, i, p)) dx[i] = s.Store(s.Load(dx[i]) + s.Load(g[i]) * scale);
    }

    // GPU variant: z[row, j] = Σ_i dropout(x[row, i])·A[j, i], one thread per output, mask applied while reading x
    public static void FusedDownKernel<T, S>(Index1D o, ArrayView<T> x, ArrayView<T> a, ArrayView<T> z, int inFeatures, int rank, ulong seed, float p)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        int row = o / rank, j = o - row * rank;
        long xBase = (long)row * inFeatures, aBase = (long)j * inFeatures;
        float scale = p > 0 ? 1f / (1f - p) : 1f;
        float acc = 0;
        for (int i = 0; i < inFeatures; i++)
        {
            long xi = xBase + i;
            if (p > 0 && !Keep(seed, xi, p)) continue;
            acc += s.Load(x[xi]) * s.Load(a[aBase + i]);
        }
        z[o] = s.Store(acc * scale);
    }

    // GPU variant: dx[row, i] += dropoutᵀ(Σ_j dz[row, j]·A[j, i]), one thread per input element
    public static void FusedDxKernel<T, S>(Index1D e, ArrayView<T> dz, ArrayView<T> a, ArrayView<T> dx, int inFeatures, int rank, ulong seed, float p)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        if (p > 0 && !Keep(seed, e, p)) return;
        int row = e / inFeatures, i = e - row * inFeatures;
        float acc = 0;
        for (int j = 0; j < rank; j++) acc += s.Load(dz[(long)row * rank + j]) * s.Load(a[(long)j * inFeatures + i]);
        float scale = p > 0 ? 1f / (1f - p) : 1f;
        dx[e] = s.Store(s.Load(dx[e]) + acc * scale);
    }

    public static void Dropout<T, S>(KernelSet k, ArrayView<T> x, ArrayView<T> u, ulong seed, float p)
        where T : unmanaged where S : struct, IStorage<T>
    {
        var (threads, chunk) = k.ElementLaunch(x.Length);
        if (threads == 0) return;
        Action<Index1D, ArrayView<T>, ArrayView<T>, ulong, float, long, long> kernel = DropoutKernel<T, S>;
        k.Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(threads, x, u, seed, p, x.Length, chunk);
    }

    public static void DropoutBackward<T, S>(KernelSet k, ArrayView<T> g, ArrayView<T> dx, ulong seed, float p)
        where T : unmanaged where S : struct, IStorage<T>
    {
        var (threads, chunk) = k.ElementLaunch(g.Length);
        if (threads == 0) return;
        Action<Index1D, ArrayView<T>, ArrayView<T>, ulong, float, long, long> kernel = DropoutBackwardKernel<T, S>;
        k.Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(threads, g, dx, seed, p, g.Length, chunk);
    }

    public static void FusedDown<T, S>(KernelSet k, ArrayView<T> x, ArrayView<T> a, ArrayView<T> z, int rows, int inFeatures, int rank, ulong seed, float p)
        where T : unmanaged where S : struct, IStorage<T>
    {
        Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<T>, int, int, ulong, float> kernel = FusedDownKernel<T, S>;
        k.Load(kernel, acc => acc.LoadAutoGroupedStreamKernel(kernel))(rows * rank, x, a, z, inFeatures, rank, seed, p);
    }

    public static void FusedDx<T, S>(KernelSet k, ArrayView<T> dz, ArrayView<T> a, ArrayView<T> dx, int rows, int inFeatures, int rank, ulong seed, float p)
        where T : unmanaged where S : struct, IStorage<T>
    {
        Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<T>, int, int, ulong, float> kernel = FusedDxKernel<T, S>;
        k.Load(kernel, acc => acc.LoadAutoGroupedStreamKernel(kernel))(rows * inFeatures, dz, a, dx, inFeatures, rank, seed, p);
    }
}
