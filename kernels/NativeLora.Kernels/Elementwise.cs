using ILGPU;
using ILGPU.Runtime;

namespace NativeLora.Kernels;

/// <summary>
/// Residual adds and fills. The residual add's backward is the identity on both inputs, so its
/// "backward" is <see cref="AddInto"/>: accumulate the incoming gradient into the residual stream's.
/// </summary>
public static class Elementwise
{
    // out = a + b
    public static void AddKernel<T, S>(Index1D i, ArrayView<T> a, ArrayView<T> b, ArrayView<T> output)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        output[i] = s.Store(s.Load(a[i]) + s.Load(b[i]));
    }

    // acc += x
    public static void AddIntoKernel<T, S>(Index1D i, ArrayView<T> acc, ArrayView<T> x)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        acc[i] = s.Store(s.Load(acc[i]) + s.Load(x[i]));
    }

    public static void FillKernel<T, S>(Index1D i, ArrayView<T> x, float value)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        x[i] = s.Store(value);
    }

    public static void Add<T, S>(KernelSet k, ArrayView<T> a, ArrayView<T> b, ArrayView<T> output)
        where T : unmanaged where S : struct, IStorage<T>
    {
        Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<T>> kernel = AddKernel<T, S>;
        k.Load(kernel, acc => acc.LoadAutoGroupedStreamKernel(kernel))((int)output.Length, a, b, output);
    }

    public static void AddInto<T, S>(KernelSet k, ArrayView<T> acc, ArrayView<T> x)
        where T : unmanaged where S : struct, IStorage<T>
    {
        Action<Index1D, ArrayView<T>, ArrayView<T>> kernel = AddIntoKernel<T, S>;
        k.Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))((int)acc.Length, acc, x);
    }

    public static void Fill<T, S>(KernelSet k, ArrayView<T> x, float value)
        where T : unmanaged where S : struct, IStorage<T>
    {
        if (x.Length == 0) return;
        Action<Index1D, ArrayView<T>, float> kernel = FillKernel<T, S>;
        k.Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))((int)x.Length, x, value);
    }
}

/// <summary>
/// Bias of a linear layer (Qwen2's q/k/v projections): forward y[r, c] += b[c]; backward
/// db[c] += Σ_r dy[r, c], one thread per column summing rows in order (deterministic).
/// </summary>
public static class Bias
{
    public static void AddKernel<T, S>(Index1D i, ArrayView<T> y, ArrayView<T> bias, int cols)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        y[i] = s.Store(s.Load(y[i]) + s.Load(bias[i % cols]));
    }

    public static void GradKernel<T, S>(Index1D c, ArrayView<T> dy, ArrayView<float> dBias, int rows, int cols)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        float acc = 0;
        for (int r = 0; r < rows; r++) acc += s.Load(dy[r * (long)cols + c]);
        dBias[c] += acc;
    }

    public static void Forward<T, S>(KernelSet k, ArrayView<T> y, ArrayView<T> bias, int cols)
        where T : unmanaged where S : struct, IStorage<T>
    {
        Action<Index1D, ArrayView<T>, ArrayView<T>, int> kernel = AddKernel<T, S>;
        k.Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))((int)y.Length, y, bias, cols);
    }

    /// <summary>Accumulates into dBias (f32).</summary>
    public static void Backward<T, S>(KernelSet k, ArrayView<T> dy, ArrayView<float> dBias, int rows, int cols)
        where T : unmanaged where S : struct, IStorage<T>
    {
        Action<Index1D, ArrayView<T>, ArrayView<float>, int, int> kernel = GradKernel<T, S>;
        k.Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(cols, dy, dBias, rows, cols);
    }
}
