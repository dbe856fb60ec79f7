using ILGPU;
using System.Numerics.Tensors;

namespace NativeLora.Kernels;

/// <summary>
/// Residual adds and fills. The residual add's backward is the identity on both inputs, so its
/// "backward" is an add into the residual stream's gradient (output = a).
/// Elementwise kernels take (n, chunk): thread t handles elements [t·chunk, (t+1)·chunk) ∩ [0, n),
/// sized by <see cref="KernelSet.ElementLaunch"/> (chunk 1 on a GPU).
/// </summary>
public static class Elementwise
{
    // out = a + b; output may be a (acc += x): each thread reads its element before writing it
    public static void AddKernel<T, S>(Index1D t, ArrayView<T> a, ArrayView<T> b, ArrayView<T> output, long n, long chunk)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        long end = Math.Min(n, (t + 1L) * chunk);
        for (long i = t * chunk; i < end; i++) output[i] = s.Store(s.Load(a[i]) + s.Load(b[i]));
    }

    public static void FillKernel<T, S>(Index1D t, ArrayView<T> x, float value, long n, long chunk)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        T v = s.Store(value);
        long end = Math.Min(n, (t + 1L) * chunk);
        for (long i = t * chunk; i < end; i++) x[i] = v;
    }

    /// <summary>A uniform draw in [0, 1) for element i of stream seed: splitmix64 of (seed, i), 24 high bits.</summary>
    public static float Uniform01(ulong seed, long i)
    {
        ulong z = seed + 0x9E3779B97F4A7C15UL * (ulong)(i + 1);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        return (z >> 40) * (1f / 16777216f);
    }

    // x = uniform(−bound, bound) from (seed, index): random weights made on the device (benchmarks of large models)
    public static void FillUniformKernel<T, S>(Index1D t, ArrayView<T> x, ulong seed, float bound, long n, long chunk)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        long end = Math.Min(n, (t + 1L) * chunk);
        for (long i = t * chunk; i < end; i++) x[i] = s.Store((2f * Uniform01(seed, i) - 1f) * bound);
    }

    public static void FillUniformGpu<T, S>(KernelSet k, ArrayView<T> x, ulong seed, float bound)
        where T : unmanaged where S : struct, IStorage<T>
    {
        var (threads, chunk) = k.ElementLaunch(x.Length);
        if (threads > 0) k.Launch(FillUniformKernel<T, S>, threads, x, seed, bound, x.Length, chunk);
    }

    public static void AddGpu<T, S>(KernelSet k, ArrayView<T> a, ArrayView<T> b, ArrayView<T> output)
        where T : unmanaged where S : struct, IStorage<T>
    {
        var (threads, chunk) = k.ElementLaunch(output.Length);
        if (threads > 0) k.Launch(AddKernel<T, S>, threads, a, b, output, output.Length, chunk);
    }

    public static void FillGpu<T, S>(KernelSet k, ArrayView<T> x, float value)
        where T : unmanaged where S : struct, IStorage<T>
    {
        var (threads, chunk) = k.ElementLaunch(x.Length);
        if (threads > 0) k.Launch(FillKernel<T, S>, threads, x, value, x.Length, chunk);
    }

    // ---- CPU: host SIMD kernels, blocks of elements over cores ----

    public static void AddCpu<T, S>(HostView<T> a, HostView<T> b, HostView<T> output)
        where T : unmanaged where S : struct, IStorage<T>
    {
        HostLoop.For(output.Length, 32768, (i0, i1) =>
        {
            Span<float> ab = stackalloc float[HostFloats.Block], bb = stackalloc float[HostFloats.Block], ob = stackalloc float[HostFloats.Block];
            for (long i = i0; i < i1; i += HostFloats.Block)
            {
                int n = (int)Math.Min(HostFloats.Block, i1 - i);
                var o = HostFloats.Target(output.Slice(i, n), ob);
                TensorPrimitives.Add(HostFloats.Read<T, S>(a.Slice(i, n), ab), HostFloats.Read<T, S>(b.Slice(i, n), bb), o);
                HostFloats.Write<T, S>(o, output.Slice(i, n));
            }
        });
    }

    public static void FillUniformCpu<T, S>(HostView<T> x, ulong seed, float bound)
        where T : unmanaged where S : struct, IStorage<T>
    {
        HostLoop.For(x.Length, 16384, (i0, i1) =>
        {
            S s = default;
            var xs = x.Span;
            for (long i = i0; i < i1; i++) xs[(int)i] = s.Store((2f * Uniform01(seed, i) - 1f) * bound);
        });
    }

    public static void FillCpu<T, S>(HostView<T> x, float value)
        where T : unmanaged where S : struct, IStorage<T>
    {
        T v = default(S).Store(value);
        HostLoop.For(x.Length, 65536, (i0, i1) => x.Slice(i0, (int)(i1 - i0)).Fill(v));
    }
}

/// <summary>
/// Bias of a linear layer (Qwen2's q/k/v projections): forward y[r, c] += b[c]; backward
/// db[c] += Σ_r dy[r, c], one thread per column summing rows in order (deterministic).
/// </summary>
public static class Bias
{
    public static void AddKernel<T, S>(Index1D t, ArrayView<T> y, ArrayView<T> bias, int cols, long n, long chunk)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        long end = Math.Min(n, (t + 1L) * chunk);
        for (long i = t * chunk; i < end; i++) y[i] = s.Store(s.Load(y[i]) + s.Load(bias[i % cols]));
    }

    public static void GradKernel<T, S>(Index1D c, ArrayView<T> dy, ArrayView<float> dBias, int rows, int cols)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        float acc = 0;
        for (int r = 0; r < rows; r++) acc += s.Load(dy[r * (long)cols + c]);
        dBias[c] += acc;
    }

    public static void ForwardGpu<T, S>(KernelSet k, ArrayView<T> y, ArrayView<T> bias, int cols)
        where T : unmanaged where S : struct, IStorage<T>
    {
        var (threads, chunk) = k.ElementLaunch(y.Length);
        if (threads > 0) k.Launch(AddKernel<T, S>, threads, y, bias, cols, y.Length, chunk);
    }

    /// <summary>Accumulates into dBias (f32).</summary>
    public static void BackwardGpu<T, S>(KernelSet k, ArrayView<T> dy, ArrayView<float> dBias, int rows, int cols)
        where T : unmanaged where S : struct, IStorage<T>
    {
        k.Launch(GradKernel<T, S>, cols, dy, dBias, rows, cols);
    }

    public static void ForwardCpu<T, S>(HostView<T> y, HostView<T> bias, int cols)
        where T : unmanaged where S : struct, IStorage<T>
    {
        var bf = new float[cols];
        HostFloats.Widen<T, S>(bias.Span, bf);
        long rows = y.Length / cols;
        HostLoop.For(rows, Math.Max(1, 16384 / cols), (r0, r1) =>
        {
            var buf = HostScratch.Floats(0, cols);
            for (long r = r0; r < r1; r++)
            {
                var row = y.Slice(r * cols, cols);
                var ys = HostFloats.Read<T, S>(row, buf);
                var o = HostFloats.Target(row, buf);
                TensorPrimitives.Add(ys, bf, o);
                HostFloats.Write<T, S>(o, row);
            }
        });
    }

    /// <summary>Columns over cores, rows in order: deterministic.</summary>
    public static void BackwardCpu<T, S>(HostView<T> dy, HostView<float> dBias, int rows, int cols)
        where T : unmanaged where S : struct, IStorage<T>
    {
        HostLoop.For(cols, 64, (c0, c1) =>
        {
            int width = (int)(c1 - c0);
            var buf = HostScratch.Floats(0, width);
            var acc = dBias.Slice(c0, width);
            for (long r = 0; r < rows; r++) TensorPrimitives.Add(acc, HostFloats.Read<T, S>(dy.Slice(r * cols + c0, width), buf), acc);
        });
    }
}

/// <summary>
/// Copies row i of src into row rows[i] of dst (KV-cache writes), and the inverse gather: row rows[i] of src into row i
/// of dst (cached keys/values in front of new ones; the token embedding's lookup). (n, chunk) as in Elementwise, over the
/// contiguous side's elements.
/// </summary>
public static class RowScatter
{
    public static void ScatterKernel<T>(Index1D t, ArrayView<T> src, ArrayView<T> dst, ArrayView<int> rows, int width, long n, long chunk)
        where T : unmanaged
    {
        long end = Math.Min(n, (t + 1L) * chunk);
        for (long i = t * chunk; i < end; i++)
        {
            long r = i / width;
            dst[rows[r] * (long)width + (i - r * width)] = src[i];
        }
    }

    public static void RunGpu<T>(KernelSet k, ArrayView<T> src, ArrayView<T> dst, ArrayView<int> rows, int width) where T : unmanaged
    {
        var (threads, chunk) = k.ElementLaunch(src.Length);
        if (threads > 0) k.Launch(ScatterKernel<T>, threads, src, dst, rows, width, src.Length, chunk);
    }

    public static void GatherKernel<T>(Index1D t, ArrayView<T> src, ArrayView<T> dst, ArrayView<int> rows, int width, long n, long chunk)
        where T : unmanaged
    {
        long end = Math.Min(n, (t + 1L) * chunk);
        for (long i = t * chunk; i < end; i++)
        {
            long r = i / width;
            dst[i] = src[rows[r] * (long)width + (i - r * width)];
        }
    }

    public static void GatherGpu<T>(KernelSet k, ArrayView<T> src, ArrayView<T> dst, ArrayView<int> rows, int width) where T : unmanaged
    {
        var (threads, chunk) = k.ElementLaunch(dst.Length);
        if (threads > 0) k.Launch(GatherKernel<T>, threads, src, dst, rows, width, dst.Length, chunk);
    }

    public static void GatherCpu<T>(HostView<T> src, HostView<T> dst, HostView<int> rows, int width) where T : unmanaged
    {
        HostLoop.For(rows.Length, Math.Max(1, 65536 / width), (r0, r1) =>
        {
            for (long r = r0; r < r1; r++) src.Slice(rows.Span[(int)r] * (long)width, width).CopyTo(dst.Slice(r * width, width));
        });
    }

    public static void RunCpu<T>(HostView<T> src, HostView<T> dst, HostView<int> rows, int width) where T : unmanaged
    {
        HostLoop.For(rows.Length, Math.Max(1, 65536 / width), (r0, r1) =>
        {
            for (long r = r0; r < r1; r++) src.Slice(r * width, width).CopyTo(dst.Slice(rows.Span[(int)r] * (long)width, width));
        });
    }
}
