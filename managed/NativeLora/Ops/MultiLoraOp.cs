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
        Run(x.DType, new Call(k, bank, x, y, slots, z, n, inFeatures, outFeatures, r));
    }

    private readonly record struct Call(KernelSet K, LinearLoraSlots Bank, Tensor X, Tensor Y, Tensor Slots, Tensor Z, int Rows, int InFeatures, int OutFeatures, int MaxRank) : IFloatOp
    {
        public void Run<T, S>() where T : unmanaged where S : struct, IStorage<T>
        {
            MultiLora.Shrink<T, S>(K, X.View<T>(), Bank.A.View<T>(), Slots.View<int>(), Bank.Ranks.View<int>(), Z.View<float>(), Rows, InFeatures, MaxRank);
            MultiLora.Expand<T, S>(K, Z.View<float>(), Bank.B.View<T>(), Slots.View<int>(), Bank.Ranks.View<int>(), Bank.Scales.View<float>(), Y.View<T>(), Rows, OutFeatures, MaxRank);
        }
    }
}
