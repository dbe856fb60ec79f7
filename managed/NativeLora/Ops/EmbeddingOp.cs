using NativeLora.Kernels;
using NativeLora.Tensors;
using static NativeLora.Ops.FloatDispatch;

namespace NativeLora.Ops;

/// <summary>Token embedding on tensors (kernels: Kernels/Embedding.cs; the forward is RowScatter's gather in Kernels/Elementwise.cs).</summary>
public static class EmbeddingOp
{
    /// <summary>ids: I32 [tokens] with host copy hostIds for the range check; table [vocab, dim]; output [tokens, dim].</summary>
    public static void Forward(KernelSet k, Tensor ids, ReadOnlySpan<int> hostIds, Tensor table, Tensor output)
    {
        using var _profile = Diagnostics.OpProfiler.Time("embedding", table.Device);
        Require(ids, DType.I32, "ids");
        int vocab = table.Dim(0), dim = table.Dim(1);
        CheckIds(hostIds, vocab);
        RequireElements(ids, hostIds.Length, "ids");
        RequireElements(output, (long)hostIds.Length * dim, "output");
        SameDType(table.DType, (output, "output"));
        Run(k, table.DType, new ForwardCall(k, ids, table, output, dim));
    }

    /// <summary>Accumulates dOutput into dTable (f32 [vocab, dim]).</summary>
    public static void Backward(KernelSet k, Tensor ids, Tensor dOutput, Tensor dTable)
    {
        Require(dTable, DType.F32, "dTable");
        int dim = dTable.Dim(1);
        int tokens = (int)ids.ElementCount;
        RequireElements(dOutput, (long)tokens * dim, "dOutput");
        Run(k, dOutput.DType, new BackwardCall(k, ids, dOutput, dTable, tokens, dim));
    }

    public static void CheckIds(ReadOnlySpan<int> ids, int vocab)
    {
        for (int i = 0; i < ids.Length; i++)
            if ((uint)ids[i] >= (uint)vocab)
                throw new ArgumentOutOfRangeException(nameof(ids), $"token id {ids[i]} at position {i} is outside the vocabulary [0, {vocab})");
    }

    private readonly record struct ForwardCall(KernelSet K, Tensor Ids, Tensor Table, Tensor Output, int Dim) : IVariantOp
    {
        // the lookup is a row gather: row ids[t] of the table into row t of the output (ids checked above)
        public void Gpu<T, S>() where T : unmanaged where S : struct, IStorage<T> => RowScatter.GatherGpu(K, Table.View<T>(), Output.View<T>(), Ids.View<int>(), Dim);
        public void Cpu<T, S>() where T : unmanaged where S : struct, IStorage<T> => RowScatter.GatherCpu(Table.Host<T>(), Output.Host<T>(), Ids.Host<int>(), Dim);
    }

    private readonly record struct BackwardCall(KernelSet K, Tensor Ids, Tensor DOutput, Tensor DTable, int Tokens, int Dim) : IVariantOp
    {
        public void Gpu<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            Embedding.BackwardGpu<T, S>(K, Ids.View<int>(), DOutput.View<T>(), DTable.View<float>(), Tokens, Dim);
        public void Cpu<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            Embedding.BackwardCpu<T, S>(Ids.Host<int>(), DOutput.Host<T>(), DTable.Host<float>(), Tokens, Dim);
    }
}
