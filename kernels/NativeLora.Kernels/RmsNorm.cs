using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using System.Numerics.Tensors;

namespace NativeLora.Kernels;

/// <summary>
/// Llama RMSNorm: y = x · r · w with r = 1/sqrt(mean(x²) + eps), per row of length dim; r is saved.
/// Backward, with g = dy·w:  dx = r·(g − x·r²·mean(g·x))  and  dw[j] += Σ_rows dy[j]·x[j]·r.
/// GPU variant: one group per row, reductions by GroupReduce. CPU variant: host SIMD, rows over cores.
/// The weight gradient sums each column's rows in order (deterministic) in both.
/// </summary>
public static class RmsNorm
{
    // residual (empty: none): x += residual first, written back (the residual stream h = x + branch), then the norm of
    // the stored, rounded sum, so the fused form gives what an add followed by the norm gives.
    public static void ForwardGroupKernel<T, S>(ArrayView<T> x, ArrayView<T> residual, ArrayView<T> w, ArrayView<T> y, ArrayView<float> rstd, int dim, float eps)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        var scratch = SharedMemory.GetDynamic<float>();
        long o = Grid.IdxX * (long)dim;
        bool add = residual.Length > 0;
        float ss = 0;
        for (int j = Group.IdxX; j < dim; j += Group.DimX)
        {
            float v = s.Load(x[o + j]);
            if (add)
            {
                x[o + j] = s.Store(v + s.Load(residual[o + j]));
                v = s.Load(x[o + j]);
            }
            ss += v * v;
        }
        float r = XMath.Rsqrt(GroupReduce.Sum(ss, scratch) / dim + eps);
        if (Group.IdxX == 0) rstd[Grid.IdxX] = r;
        for (int j = Group.IdxX; j < dim; j += Group.DimX) y[o + j] = s.Store(s.Load(x[o + j]) * r * s.Load(w[j]));
    }

    // residualGrad (empty: none) is added to dx: the gradient reaching the residual stream around the norm.
    public static void BackwardGroupKernel<T, S>(ArrayView<T> x, ArrayView<T> w, ArrayView<T> dy, ArrayView<float> rstd, ArrayView<T> residualGrad, ArrayView<T> dx, int dim)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        var scratch = SharedMemory.GetDynamic<float>();
        long o = Grid.IdxX * (long)dim;
        bool add = residualGrad.Length > 0;
        float r = rstd[Grid.IdxX];
        float gx = 0;
        for (int j = Group.IdxX; j < dim; j += Group.DimX) gx += s.Load(dy[o + j]) * s.Load(w[j]) * s.Load(x[o + j]);
        float c = r * r * GroupReduce.Sum(gx, scratch) / dim;
        for (int j = Group.IdxX; j < dim; j += Group.DimX)
        {
            float g = s.Load(s.Store(r * (s.Load(dy[o + j]) * s.Load(w[j]) - s.Load(x[o + j]) * c)));
            dx[o + j] = s.Store(add ? g + s.Load(residualGrad[o + j]) : g);
        }
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

    /// <summary>y = norm(x); with a residual (non-empty view) x += residual first, in place.</summary>
    public static void ForwardGpu<T, S>(KernelSet k, ArrayView<T> x, ArrayView<T> residual, ArrayView<T> w, ArrayView<T> y, ArrayView<float> rstd, int rows, int dim, float eps)
        where T : unmanaged where S : struct, IStorage<T>
    {
        Action<ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<float>, int, float> kernel = ForwardGroupKernel<T, S>;
        k.Load(kernel, a => a.LoadStreamKernel(kernel))(k.RowConfig(rows), x, residual, w, y, rstd, dim, eps);
    }

    /// <summary>
    /// Writes dx, plus residualGrad when that view is non-empty; accumulates dw (f32) — zero it first for a fresh
    /// gradient, or pass an empty view to skip it.
    /// </summary>
    public static void BackwardGpu<T, S>(KernelSet k, ArrayView<T> x, ArrayView<T> w, ArrayView<T> dy, ArrayView<float> rstd, ArrayView<T> residualGrad, ArrayView<T> dx, ArrayView<float> dw, int rows, int dim)
        where T : unmanaged where S : struct, IStorage<T>
    {
        Action<ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<float>, ArrayView<T>, ArrayView<T>, int> kernel = BackwardGroupKernel<T, S>;
        k.Load(kernel, a => a.LoadStreamKernel(kernel))(k.RowConfig(rows), x, w, dy, rstd, residualGrad, dx, dim);
        if (dw.Length > 0)
        {
            k.Launch(WeightGradKernel<T, S>, dim, x, dy, rstd, dw, rows, dim);
        }
    }

    // ---- CPU: host SIMD kernels, rows over cores ----

    /// <summary>As <see cref="ForwardGpu"/>: with a residual (non-empty), x += residual first, in place.</summary>
    public static void ForwardCpu<T, S>(HostView<T> x, HostView<T> residual, HostView<T> w, HostView<T> y, HostView<float> rstd, int rows, int dim, float eps)
        where T : unmanaged where S : struct, IStorage<T>
    {
        var wf = new float[dim];
        HostFloats.Widen<T, S>(w.Span, wf);
        bool add = residual.Length > 0;
        HostLoop.For(rows, Math.Max(1, 8192 / dim), (r0, r1) =>
        {
            var inBuf = HostScratch.Floats(0, dim);
            var outBuf = HostScratch.Floats(1, dim);
            var resBuf = HostScratch.Floats(2, dim);
            var sum = HostScratch.Floats(3, dim);
            for (long r = r0; r < r1; r++)
            {
                if (add) // h = x + residual, stored rounded, then read back: the norm sees what is stored
                {
                    HostFloats.Widen<T, S>(x.Slice(r * dim, dim), sum);
                    TensorPrimitives.Add(sum, HostFloats.Read<T, S>(residual.Slice(r * dim, dim), resBuf), sum);
                    HostFloats.Narrow<T, S>(sum, x.Slice(r * dim, dim));
                }
                var xs = HostFloats.Read<T, S>(x.Slice(r * dim, dim), inBuf);
                float rs = 1f / MathF.Sqrt(TensorPrimitives.SumOfSquares(xs) / dim + eps);
                rstd.Span[(int)r] = rs;
                var ys = HostFloats.Target(y.Slice(r * dim, dim), outBuf);
                TensorPrimitives.Multiply(xs, rs, ys);
                TensorPrimitives.Multiply(ys, wf, ys);
                HostFloats.Write<T, S>(ys, y.Slice(r * dim, dim));
            }
        });
    }

    /// <summary>As <see cref="BackwardGpu"/>; dx may not alias x, dy or residualGrad.</summary>
    public static void BackwardCpu<T, S>(HostView<T> x, HostView<T> w, HostView<T> dy, HostView<float> rstd, HostView<T> residualGrad, HostView<T> dx, HostView<float> dw, int rows, int dim)
        where T : unmanaged where S : struct, IStorage<T>
    {
        var wf = new float[dim];
        HostFloats.Widen<T, S>(w.Span, wf);
        bool add = residualGrad.Length > 0;
        HostLoop.For(rows, Math.Max(1, 8192 / dim), (r0, r1) =>
        {
            var xBuf = HostScratch.Floats(0, dim);
            var dyBuf = HostScratch.Floats(1, dim);
            var g = HostScratch.Floats(2, dim);
            var resBuf = HostScratch.Floats(3, dim);
            for (long r = r0; r < r1; r++)
            {
                var xs = HostFloats.Read<T, S>(x.Slice(r * dim, dim), xBuf);
                var dys = HostFloats.Read<T, S>(dy.Slice(r * dim, dim), dyBuf);
                float rs = rstd.Span[(int)r];
                TensorPrimitives.Multiply(dys, wf, g);                   // g = dy·w
                float c = rs * rs * TensorPrimitives.Dot(g, xs) / dim;
                TensorPrimitives.MultiplyAdd(xs, -c, g, g);              // g − x·c
                if (add) // the norm's dx rounded to T as a separate kernel would store it, then the residual's gradient added
                {
                    TensorPrimitives.Multiply(g, rs, g);
                    HostFloats.Narrow<T, S>(g, dx.Slice(r * dim, dim));
                    HostFloats.Widen<T, S>(dx.Slice(r * dim, dim), g);
                    TensorPrimitives.Add(g, HostFloats.Read<T, S>(residualGrad.Slice(r * dim, dim), resBuf), g);
                    HostFloats.Narrow<T, S>(g, dx.Slice(r * dim, dim));
                    continue;
                }
                var dxs = HostFloats.Target(dx.Slice(r * dim, dim), g);
                TensorPrimitives.Multiply(g, rs, dxs);
                HostFloats.Write<T, S>(dxs, dx.Slice(r * dim, dim));
            }
        });
        if (dw.Length == 0) return;
        // columns over cores, rows in order within a column: the same sums whatever the core count
        HostLoop.For(dim, 64, (c0, c1) =>
        {
            int width = (int)(c1 - c0);
            var xBuf = HostScratch.Floats(0, width);
            var dyBuf = HostScratch.Floats(1, width);
            var t = HostScratch.Floats(2, width);
            var acc = dw.Slice(c0, width);
            for (long r = 0; r < rows; r++)
            {
                var xs = HostFloats.Read<T, S>(x.Slice(r * dim + c0, width), xBuf);
                var dys = HostFloats.Read<T, S>(dy.Slice(r * dim + c0, width), dyBuf);
                TensorPrimitives.Multiply(dys, xs, t);
                TensorPrimitives.MultiplyAdd(t, rstd.Span[(int)r], acc, acc);
            }
        });
    }

    /// <summary>The float64 reference (tests check it against finite differences; tests and selfcheck compare both variants with it).</summary>
    public static class Reference
    {
        /// <summary>y = x·r·w, r = 1/sqrt(mean(x²)+eps); rstd (if given) receives r per row.</summary>
        public static double[] Forward(double[] x, double[] w, int rows, int dim, double eps, double[]? rstd = null)
        {
            var y = new double[x.Length];
            for (int r = 0; r < rows; r++)
            {
                double ss = 0;
                for (int j = 0; j < dim; j++) ss += x[r * dim + j] * x[r * dim + j];
                double rs = 1 / Math.Sqrt(ss / dim + eps);
                if (rstd != null) rstd[r] = rs;
                for (int j = 0; j < dim; j++) y[r * dim + j] = x[r * dim + j] * rs * w[j];
            }
            return y;
        }

        /// <summary>dx_j = Σ_k dy_k ∂y_k/∂x_j with ∂r/∂x_j = −r³·x_j/dim; dw_j = Σ_rows dy_j·x_j·r.</summary>
        public static (double[] Dx, double[] Dw) Backward(double[] x, double[] w, double[] dy, int rows, int dim, double eps)
        {
            var dx = new double[x.Length];
            var dw = new double[dim];
            for (int r = 0; r < rows; r++)
            {
                double ss = 0;
                for (int j = 0; j < dim; j++) ss += x[r * dim + j] * x[r * dim + j];
                double rs = 1 / Math.Sqrt(ss / dim + eps);
                double sumDyWX = 0;
                for (int kk = 0; kk < dim; kk++) sumDyWX += dy[r * dim + kk] * w[kk] * x[r * dim + kk];
                for (int j = 0; j < dim; j++)
                {
                    dx[r * dim + j] = dy[r * dim + j] * w[j] * rs - sumDyWX * rs * rs * rs * x[r * dim + j] / dim;
                    dw[j] += dy[r * dim + j] * x[r * dim + j] * rs;
                }
            }
            return (dx, dw);
        }
    }
}
