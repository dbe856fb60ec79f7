using NativeLora.Kernels;
using NativeLora.Tensors;
using static NativeLora.Ops.FloatDispatch;

namespace NativeLora.Ops;

/// <summary>The elementwise SwiGLU on tensors (kernels: Kernels/SwiGlu.cs). gate, up, h: [tokens, hidden].</summary>
public static class SwiGluOp
{
    public static void Forward(KernelSet k, Tensor gate, Tensor up, Tensor h)
    {
        using var _profile = Diagnostics.OpProfiler.Time("swiglu", h.Device);
        SameDType(h.DType, (gate, "gate"), (up, "up"));
        RequireElements(gate, h.ElementCount, "gate");
        RequireElements(up, h.ElementCount, "up");
        Run(h.DType,
            () => SwiGlu.Forward<float, F32>(k, gate.View<float>(), up.View<float>(), h.View<float>()),
            () => SwiGlu.Forward<ushort, Bf16>(k, gate.View<ushort>(), up.View<ushort>(), h.View<ushort>()),
            () => SwiGlu.Forward<ushort, F16>(k, gate.View<ushort>(), up.View<ushort>(), h.View<ushort>()));
    }

    /// <summary>dgate/dup may be gate/up themselves (in-place backward).</summary>
    public static void Backward(KernelSet k, Tensor gate, Tensor up, Tensor dh, Tensor dgate, Tensor dup)
    {
        using var _profile = Diagnostics.OpProfiler.Time("swiglu.bwd", dh.Device);
        SameDType(dh.DType, (gate, "gate"), (up, "up"), (dgate, "dgate"), (dup, "dup"));
        foreach (var (t, n) in new[] { (gate, "gate"), (up, "up"), (dgate, "dgate"), (dup, "dup") }) RequireElements(t, dh.ElementCount, n);
        Run(dh.DType,
            () => SwiGlu.Backward<float, F32>(k, gate.View<float>(), up.View<float>(), dh.View<float>(), dgate.View<float>(), dup.View<float>()),
            () => SwiGlu.Backward<ushort, Bf16>(k, gate.View<ushort>(), up.View<ushort>(), dh.View<ushort>(), dgate.View<ushort>(), dup.View<ushort>()),
            () => SwiGlu.Backward<ushort, F16>(k, gate.View<ushort>(), up.View<ushort>(), dh.View<ushort>(), dgate.View<ushort>(), dup.View<ushort>()));
    }
}
