using ILGPU;

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

    public static void DropoutGpu<T, S>(KernelSet k, ArrayView<T> x, ArrayView<T> u, ulong seed, float p)
        where T : unmanaged where S : struct, IStorage<T>
    {
        var (threads, chunk) = k.ElementLaunch(x.Length);
        if (threads > 0) k.Launch(DropoutKernel<T, S>, threads, x, u, seed, p, x.Length, chunk);
    }

    public static void DropoutBackwardGpu<T, S>(KernelSet k, ArrayView<T> g, ArrayView<T> dx, ulong seed, float p)
        where T : unmanaged where S : struct, IStorage<T>
    {
        var (threads, chunk) = k.ElementLaunch(g.Length);
        if (threads > 0) k.Launch(DropoutBackwardKernel<T, S>, threads, g, dx, seed, p, g.Length, chunk);
    }

    public static void FusedDown<T, S>(KernelSet k, ArrayView<T> x, ArrayView<T> a, ArrayView<T> z, int rows, int inFeatures, int rank, ulong seed, float p)
        where T : unmanaged where S : struct, IStorage<T>
    {
        k.Launch(FusedDownKernel<T, S>, rows * rank, x, a, z, inFeatures, rank, seed, p);
    }

    public static void FusedDx<T, S>(KernelSet k, ArrayView<T> dz, ArrayView<T> a, ArrayView<T> dx, int rows, int inFeatures, int rank, ulong seed, float p)
        where T : unmanaged where S : struct, IStorage<T>
    {
        k.Launch(FusedDxKernel<T, S>, rows * inFeatures, dz, a, dx, inFeatures, rank, seed, p);
    }

    // ---- CPU: host kernels (the same masks: Keep is a pure function of seed and index) ----

    public static void DropoutCpu<T, S>(HostView<T> x, HostView<T> u, ulong seed, float p)
        where T : unmanaged where S : struct, IStorage<T>
    {
        float scale = 1f / (1f - p);
        HostLoop.For(x.Length, 16384, (i0, i1) =>
        {
            S s = default;
            var xs = x.Span;
            var us = u.Span;
            for (long i = i0; i < i1; i++) us[(int)i] = Keep(seed, i, p) ? s.Store(s.Load(xs[(int)i]) * scale) : s.Store(0f);
        });
    }

    public static void DropoutBackwardCpu<T, S>(HostView<T> g, HostView<T> dx, ulong seed, float p)
        where T : unmanaged where S : struct, IStorage<T>
    {
        float scale = 1f / (1f - p);
        HostLoop.For(g.Length, 16384, (i0, i1) =>
        {
            S s = default;
            var gs = g.Span;
            var ds = dx.Span;
            for (long i = i0; i < i1; i++)
                if (Keep(seed, i, p)) ds[(int)i] = s.Store(s.Load(ds[(int)i]) + s.Load(gs[(int)i]) * scale);
        });
    }

    /// <summary>
    /// The float64 reference of an adapted linear, forward and backward, shared by the tests (which check it against
    /// finite differences) and `selfcheck --kernels`. u = dropout(x) (element i kept where <see cref="Keep"/>(seed, i, p),
    /// scaled by 1/(1−p)), z = u·Aᵀ, l = s·z·Bᵀ, y = x·W0ᵀ + bias + l. DoRA (magnitude m given): g = m/‖W0 + s·B·A‖ per
    /// output row and y = x·W0ᵀ + bias + (g − 1)·u·W0ᵀ + g·l. Backward with DoRA's norm detached, as PEFT does:
    /// dl = g·dy, dB = s·dlᵀ·z, dz = s·dl·B, dA = dzᵀ·u, dx = dy·W0 + dropoutᵀ(dz·A + (g − 1)·dy·W0),
    /// dm = Σ_rows dy·(u·W0ᵀ + l) / ‖W0 + s·B·A‖ (zero without DoRA).
    /// </summary>
    public sealed class Reference
    {
        public double[] Y = null!, Dx = null!, DA = null!, DB = null!, Dm = null!;

        // lhs [rows, k] · rhsTᵀ (rhsT [cols, k])
        private static double[] Mat(double[] lhs, int rows, int k, double[] rhsT, int cols)
        {
            var o = new double[rows * cols];
            for (int i = 0; i < rows; i++) for (int j = 0; j < cols; j++) { double t = 0; for (int q = 0; q < k; q++) t += lhs[i * k + q] * rhsT[j * k + q]; o[i * cols + j] = t; }
            return o;
        }

        public static Reference Run(double[] x, double[] w0, double[]? bias, double[] a, double[] b, double[]? m, double[] dy,
            int n, int inF, int outF, int r, double s, float p, ulong seed)
        {
            bool Kept(long i) => p == 0 || Keep(seed, i, p);
            double keptScale = 1 / (1 - (double)p);
            var u = new double[n * inF];
            for (int i = 0; i < u.Length; i++) u[i] = Kept(i) ? x[i] * keptScale : 0;
            var z = Mat(u, n, inF, a, r);
            var l = Mat(z, n, r, b, outF);
            for (int e = 0; e < l.Length; e++) l[e] *= s;
            var xw = Mat(x, n, inF, w0, outF);
            var re = new Reference { Y = new double[n * outF], Dm = new double[outF] };
            double[] g = new double[outF], wn = new double[outF], bd = m != null ? Mat(u, n, inF, w0, outF) : xw;
            for (int o = 0; o < outF; o++)
            {
                g[o] = 1;
                if (m == null) continue;
                double ss = 0;
                for (int i = 0; i < inF; i++) { double d = 0; for (int q = 0; q < r; q++) d += b[o * r + q] * a[q * inF + i]; double v = w0[o * inF + i] + s * d; ss += v * v; }
                wn[o] = Math.Sqrt(ss);
                g[o] = m[o] / wn[o];
            }
            for (int i = 0; i < n; i++)
                for (int o = 0; o < outF; o++)
                {
                    int e = i * outF + o;
                    re.Y[e] = xw[e] + (bias?[o] ?? 0) + (g[o] - 1) * bd[e] + g[o] * l[e]; // without DoRA g = 1
                }
            var dl = new double[n * outF];
            for (int e = 0; e < dl.Length; e++) dl[e] = g[e % outF] * dy[e];
            re.DB = new double[outF * r];
            for (int o = 0; o < outF; o++) for (int q = 0; q < r; q++) { double t = 0; for (int i = 0; i < n; i++) t += dl[i * outF + o] * z[i * r + q]; re.DB[o * r + q] = s * t; }
            var dz = new double[n * r];
            for (int i = 0; i < n; i++) for (int q = 0; q < r; q++) { double t = 0; for (int o = 0; o < outF; o++) t += dl[i * outF + o] * b[o * r + q]; dz[i * r + q] = s * t; }
            re.DA = new double[r * inF];
            for (int q = 0; q < r; q++) for (int c = 0; c < inF; c++) { double t = 0; for (int i = 0; i < n; i++) t += dz[i * r + q] * u[i * inF + c]; re.DA[q * inF + c] = t; }
            re.Dx = new double[n * inF];
            for (int i = 0; i < n; i++)
                for (int c = 0; c < inF; c++)
                {
                    double viaU = 0, viaBase = 0;
                    for (int q = 0; q < r; q++) viaU += dz[i * r + q] * a[q * inF + c];
                    for (int o = 0; o < outF; o++)
                    {
                        viaBase += dy[i * outF + o] * w0[o * inF + c];
                        viaU += (g[o] - 1) * dy[i * outF + o] * w0[o * inF + c];
                    }
                    int e = i * inF + c;
                    re.Dx[e] = viaBase + (Kept(e) ? viaU * keptScale : 0);
                }
            if (m != null)
                for (int o = 0; o < outF; o++) { double t = 0; for (int i = 0; i < n; i++) t += dy[i * outF + o] * (bd[i * outF + o] + l[i * outF + o]); re.Dm[o] = t / wn[o]; }
            return re;
        }
    }
}
