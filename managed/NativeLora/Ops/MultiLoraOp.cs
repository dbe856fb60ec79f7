using NativeLora.Kernels;
using NativeLora.Lora;
using NativeLora.Tensors;
using static NativeLora.Ops.FloatDispatch;

namespace NativeLora.Ops;

/// <summary>Per-row served adapters on a linear's output (kernels: MultiLora.cs; slots: Lora/LoraSlots.cs).</summary>
public static class MultiLoraOp
{
    /// <summary>y [N, out] += scale[slot]·(x·A[slot]ᵀ)·B[slot]ᵀ per row over the slot's own rank, slot = slots[n] (I32 [N]; −1 adds nothing).</summary>
    public static void Forward(KernelSet k, LinearLoraSlots bank, Tensor x, Tensor y, Tensor slots)
    {
        using var _profile = Diagnostics.OpProfiler.Time("multi_lora", x.Device);
        Require(slots, DType.I32, "slots");
        SameDType(x.DType, (y, "y"), (bank.A, "A bank"), (bank.B, "B bank"));
        int n = x.Dim(0), inFeatures = x.Dim(1), outFeatures = y.Dim(1), r = bank.MaxRank;
        if (slots.ElementCount != n) throw new ArgumentException($"{slots.ElementCount} adapter slots for {n} rows");
        using var z = x.Device.Allocate(DType.F32, n, r);
        Run(x.DType,
            () => { MultiLora.Shrink<float, F32>(k, x.View<float>(), bank.A.View<float>(), slots.View<int>(), bank.Ranks.View<int>(), z.View<float>(), n, inFeatures, r);
                    MultiLora.Expand<float, F32>(k, z.View<float>(), bank.B.View<float>(), slots.View<int>(), bank.Ranks.View<int>(), bank.Scales.View<float>(), y.View<float>(), n, outFeatures, r); },
            () => { MultiLora.Shrink<ushort, Bf16>(k, x.View<ushort>(), bank.A.View<ushort>(), slots.View<int>(), bank.Ranks.View<int>(), z.View<float>(), n, inFeatures, r);
                    MultiLora.Expand<ushort, Bf16>(k, z.View<float>(), bank.B.View<ushort>(), slots.View<int>(), bank.Ranks.View<int>(), bank.Scales.View<float>(), y.View<ushort>(), n, outFeatures, r); },
            () => { MultiLora.Shrink<ushort, F16>(k, x.View<ushort>(), bank.A.View<ushort>(), slots.View<int>(), bank.Ranks.View<int>(), z.View<float>(), n, inFeatures, r);
                    MultiLora.Expand<ushort, F16>(k, z.View<float>(), bank.B.View<ushort>(), slots.View<int>(), bank.Ranks.View<int>(), bank.Scales.View<float>(), y.View<ushort>(), n, outFeatures, r); });
    }
}
