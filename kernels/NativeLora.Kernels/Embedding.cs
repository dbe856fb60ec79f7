using ILGPU;
using ILGPU.Runtime;

namespace NativeLora.Kernels;

/// <summary>
/// Token embedding lookup. Forward: out[t, :] = table[ids[t], :]. Backward: dTable[ids[t], :] +=
/// dOut[t, :], done by one thread per embedding column walking the tokens in order, so repeated
/// ids accumulate in a fixed order without atomics: the result is deterministic.
/// </summary>
public static class Embedding
{
    public static void ForwardKernel<T>(Index1D th, ArrayView<int> ids, ArrayView<T> table, ArrayView<T> output, int dim, long n, long chunk)
        where T : unmanaged
    {
        long end = Math.Min(n, (th + 1L) * chunk);
        for (long i = th * chunk; i < end; i++)
        {
            long t = i / dim;
            long d = i - t * dim;
            output[i] = table[ids[t] * (long)dim + d];
        }
    }

    public static void BackwardKernel<T, S>(Index1D d, ArrayView<int> ids, ArrayView<T> dOutput, ArrayView<float> dTable, int tokens, int dim)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        for (int t = 0; t < tokens; t++)
            dTable[ids[t] * (long)dim + d] += s.Load(dOutput[t * (long)dim + d]);
    }

    /// <summary>ids must already be checked to lie in [0, vocab) (the caller does, on the host).</summary>
    public static void Forward<T>(KernelSet k, ArrayView<int> ids, ArrayView<T> table, ArrayView<T> output, int dim)
        where T : unmanaged
    {
        var (threads, chunk) = k.ElementLaunch(output.Length);
        if (threads == 0) return;
        Action<Index1D, ArrayView<int>, ArrayView<T>, ArrayView<T>, int, long, long> kernel = ForwardKernel<T>;
        k.Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(threads, ids, table, output, dim, output.Length, chunk);
    }

    /// <summary>Accumulates into dTable (f32); zero it first for a fresh gradient.</summary>
    public static void Backward<T, S>(KernelSet k, ArrayView<int> ids, ArrayView<T> dOutput, ArrayView<float> dTable, int tokens, int dim)
        where T : unmanaged where S : struct, IStorage<T>
    {
        Action<Index1D, ArrayView<int>, ArrayView<T>, ArrayView<float>, int, int> kernel = BackwardKernel<T, S>;
        k.Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(dim, ids, dOutput, dTable, tokens, dim);
    }
}
