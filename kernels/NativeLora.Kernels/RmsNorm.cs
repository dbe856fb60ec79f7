using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace NativeLora.Kernels;

/// <summary>
/// Llama RMSNorm: y = x · r · w with r = 1/sqrt(mean(x²) + eps), per row of length dim; r is saved.
/// Backward, with g = dy·w:  dx = r·(g − x·r²·mean(g·x))  and  dw[j] += Σ_rows dy[j]·x[j]·r.
/// CPU variant: one thread per row. GPU variant: one group per row, reductions by GroupReduce.
/// The weight gradient is one thread per column summing rows in order (deterministic) in both.
/// </summary>
public static class RmsNorm
{
    public static void ForwardRowKernel<T, S>(Index1D row, ArrayView<T> x, ArrayView<T> w, ArrayView<T> y, ArrayView<float> rstd, int dim, float eps)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        long o = row * (long)dim;
        float ss = 0;
        for (int j = 0; j < dim; j++) { float v = s.Load(x[o + j]); ss += v * v; }
        float r = XMath.Rsqrt(ss / dim + eps);
        rstd[row] = r;
        for (int j = 0; j < dim; j++) y[o + j] = s.Store(s.Load(x[o + j]) * r * s.Load(w[j]));
    }

    public static void ForwardGroupKernel<T, S>(ArrayView<T> x, ArrayView<T> w, ArrayView<T> y, ArrayView<float> rstd, int dim, float eps)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        var scratch = SharedMemory.GetDynamic<float>();
        long o = Grid.IdxX * (long)dim;
        float ss = 0;
        for (int j = Group.IdxX; j < dim; j += Group.DimX) { float v = s.Load(x[o + j]); ss += v * v; }
        float r = XMath.Rsqrt(GroupReduce.Sum(ss, scratch) / dim + eps);
        if (Group.IdxX == 0) rstd[Grid.IdxX] = r;
        for (int j = Group.IdxX; j < dim; j += Group.DimX) y[o + j] = s.Store(s.Load(x[o + j]) * r * s.Load(w[j]));
    }

    public static void BackwardRowKernel<T, S>(Index1D row, ArrayView<T> x, ArrayView<T> w, ArrayView<T> dy, ArrayView<float> rstd, ArrayView<T> dx, int dim)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        long o = row * (long)dim;
        float r = rstd[row];
        float gx = 0;
        for (int j = 0; j < dim; j++) gx += s.Load(dy[o + j]) * s.Load(w[j]) * s.Load(x[o + j]);
        float c = r * r * gx / dim;
        for (int j = 0; j < dim; j++)
            dx[o + j] = s.Store(r * (s.Load(dy[o + j]) * s.Load(w[j]) - s.Load(x[o + j]) * c));
    }

    public static void BackwardGroupKernel<T, S>(ArrayView<T> x, ArrayView<T> w, ArrayView<T> dy, ArrayView<float> rstd, ArrayView<T> dx, int dim)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        var scratch = SharedMemory.GetDynamic<float>();
        long o = Grid.IdxX * (long)dim;
        float r = rstd[Grid.IdxX];
        float gx = 0;
        for (int j = Group.IdxX; j < dim; j += Group.DimX) gx += s.Load(dy[o + j]) * s.Load(w[j]) * s.Load(x[o + j]);
        float c = r * r * GroupReduce.Sum(gx, scratch) / dim;
        for (int j = Group.IdxX; j < dim; j += Group.DimX)
            dx[o + j] = s.Store(r * (s.Load(dy[o + j]) * s.Load(w[j]) - s.Load(x[o + j]) * c));
    }

    public static void WeightGradKernel<T, S>(Index1D col, ArrayView<T> x, ArrayView<T> dy, ArrayView<float> rstd, ArrayView<float> dw, int rows, int dim)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        float acc = 0;
        for (int r = 0; r < rows; r++)
        {
            long o = r * (long)dim + col;
            acc += s.Load(dy[o]) * s.Load(x[o]) * rstd[r];
        }
        dw[col] += acc;
    }

    public static void Forward<T, S>(KernelSet k, ArrayView<T> x, ArrayView<T> w, ArrayView<T> y, ArrayView<float> rstd, int rows, int dim, float eps)
        where T : unmanaged where S : struct, IStorage<T>
    {
        if (k.GpuVariants)
        {
            Action<ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<float>, int, float> kernel = ForwardGroupKernel<T, S>;
            k.Load(kernel, a => a.LoadStreamKernel(kernel))(k.RowConfig(rows), x, w, y, rstd, dim, eps);
        }
        else
        {
            Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<float>, int, float> kernel = ForwardRowKernel<T, S>;
            k.Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(rows, x, w, y, rstd, dim, eps);
        }
    }

    /// <summary>Writes dx; accumulates dw (f32) — zero it first for a fresh gradient, or pass an empty view to skip it.</summary>
    public static void Backward<T, S>(KernelSet k, ArrayView<T> x, ArrayView<T> w, ArrayView<T> dy, ArrayView<float> rstd, ArrayView<T> dx, ArrayView<float> dw, int rows, int dim)
        where T : unmanaged where S : struct, IStorage<T>
    {
        if (k.GpuVariants)
        {
            Action<ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<float>, ArrayView<T>, int> kernel = BackwardGroupKernel<T, S>;
            k.Load(kernel, a => a.LoadStreamKernel(kernel))(k.RowConfig(rows), x, w, dy, rstd, dx, dim);
        }
        else
        {
            Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<float>, ArrayView<T>, int> kernel = BackwardRowKernel<T, S>;
            k.Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(rows, x, w, dy, rstd, dx, dim);
        }
        if (dw.Length > 0)
        {
            Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<float>, ArrayView<float>, int, int> wk = WeightGradKernel<T, S>;
            k.Load(wk, a => a.LoadAutoGroupedStreamKernel(wk))(dim, x, dy, rstd, dw, rows, dim);
        }
    }
}
