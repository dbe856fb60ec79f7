using NativeLora.Kernels;
using NativeLora.Tensors;
using static NativeLora.Ops.FloatDispatch;

namespace NativeLora.Ops;

/// <summary>Token embedding on tensors (kernels: Kernels/Embedding.cs).</summary>
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
        Run(table.DType,
            () => Embedding.Forward(k, ids.View<int>(), table.View<float>(), output.View<float>(), dim),
            () => Embedding.Forward(k, ids.View<int>(), table.View<ushort>(), output.View<ushort>(), dim),
            () => Embedding.Forward(k, ids.View<int>(), table.View<ushort>(), output.View<ushort>(), dim));
    }

    /// <summary>Accumulates dOutput into dTable (f32 [vocab, dim]).</summary>
    public static void Backward(KernelSet k, Tensor ids, Tensor dOutput, Tensor dTable)
    {
        Require(dTable, DType.F32, "dTable");
        int dim = dTable.Dim(1);
        int tokens = (int)ids.ElementCount;
        RequireElements(dOutput, (long)tokens * dim, "dOutput");
        Run(dOutput.DType,
            () => Embedding.Backward<float, F32>(k, ids.View<int>(), dOutput.View<float>(), dTable.View<float>(), tokens, dim),
            () => Embedding.Backward<ushort, Bf16>(k, ids.View<int>(), dOutput.View<ushort>(), dTable.View<float>(), tokens, dim),
            () => Embedding.Backward<ushort, F16>(k, ids.View<int>(), dOutput.View<ushort>(), dTable.View<float>(), tokens, dim));
    }

    public static void CheckIds(ReadOnlySpan<int> ids, int vocab)
    {
        for (int i = 0; i < ids.Length; i++)
            if ((uint)ids[i] >= (uint)vocab)
                throw new ArgumentOutOfRangeException(nameof(ids), $"token id {ids[i]} at position {i} is outside the vocabulary [0, {vocab})");
    }
}
