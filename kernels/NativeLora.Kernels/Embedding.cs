using ILGPU;
using System.Numerics.Tensors;

namespace NativeLora.Kernels;

/// <summary>
/// Token embedding lookup. Forward: out[t, :] = table[ids[t], :], the row gather of <see cref="RowScatter"/>.
/// Backward: dTable[ids[t], :] += dOut[t, :], done by one thread per embedding column walking the tokens in
/// order, so repeated ids accumulate in a fixed order without atomics: the result is deterministic.
/// </summary>
public static class Embedding
{
    public static void BackwardKernel<T, S>(Index1D d, ArrayView<int> ids, ArrayView<T> dOutput, ArrayView<float> dTable, int tokens, int dim)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        for (int t = 0; t < tokens; t++)
            dTable[ids[t] * (long)dim + d] += s.Load(dOutput[t * (long)dim + d]);
    }

    /// <summary>Accumulates into dTable (f32); zero it first for a fresh gradient.</summary>
    public static void BackwardGpu<T, S>(KernelSet k, ArrayView<int> ids, ArrayView<T> dOutput, ArrayView<float> dTable, int tokens, int dim)
        where T : unmanaged where S : struct, IStorage<T>
    {
        k.Launch(BackwardKernel<T, S>, dim, ids, dOutput, dTable, tokens, dim);
    }

    // ---- CPU: host kernels ----

    /// <summary>Columns over cores, tokens in order within a column: repeated ids add up in a fixed order.</summary>
    public static void BackwardCpu<T, S>(HostView<int> ids, HostView<T> dOutput, HostView<float> dTable, int tokens, int dim)
        where T : unmanaged where S : struct, IStorage<T>
    {
        HostLoop.For(dim, 64, (c0, c1) =>
        {
            int width = (int)(c1 - c0);
            var buf = HostScratch.Floats(0, width);
            for (long t = 0; t < tokens; t++)
            {
                var acc = dTable.Slice(ids.Span[(int)t] * (long)dim + c0, width);
                TensorPrimitives.Add(acc, HostFloats.Read<T, S>(dOutput.Slice(t * dim + c0, width), buf), acc);
            }
        });
    }

    /// <summary>The float64 reference: a gather of rows and its transpose, a scatter-add (repeated ids add up).</summary>
    public static class Reference
    {
        public static (double[] Output, double[] DTable) Run(int[] ids, double[] table, double[] dOut, int vocab, int dim)
        {
            var output = new double[ids.Length * dim];
            var dTable = new double[vocab * dim];
            for (int i = 0; i < ids.Length; i++)
                for (int d = 0; d < dim; d++)
                {
                    output[i * dim + d] = table[ids[i] * dim + d];
                    dTable[ids[i] * dim + d] += dOut[i * dim + d];
                }
            return (output, dTable);
        }
    }
}
