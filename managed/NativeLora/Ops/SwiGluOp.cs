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
        Run(k, h.DType, new ForwardCall(k, gate, up, h));
    }

    /// <summary>dgate/dup may be gate/up themselves (in-place backward).</summary>
    public static void Backward(KernelSet k, Tensor gate, Tensor up, Tensor dh, Tensor dgate, Tensor dup)
    {
        using var _profile = Diagnostics.OpProfiler.Time("swiglu.bwd", dh.Device);
        SameDType(dh.DType, (gate, "gate"), (up, "up"), (dgate, "dgate"), (dup, "dup"));
        foreach (var (t, n) in new[] { (gate, "gate"), (up, "up"), (dgate, "dgate"), (dup, "dup") }) RequireElements(t, dh.ElementCount, n);
        Run(k, dh.DType, new BackwardCall(k, gate, up, dh, dgate, dup));
    }

    private readonly record struct ForwardCall(KernelSet K, Tensor Gate, Tensor Up, Tensor H) : IVariantOp
    {
        public void Gpu<T, S>() where T : unmanaged where S : struct, IStorage<T> => SwiGlu.ForwardGpu<T, S>(K, Gate.View<T>(), Up.View<T>(), H.View<T>());
        public void Cpu<T, S>() where T : unmanaged where S : struct, IStorage<T> => SwiGlu.ForwardCpu<T, S>(Gate.Host<T>(), Up.Host<T>(), H.Host<T>());
    }

    private readonly record struct BackwardCall(KernelSet K, Tensor Gate, Tensor Up, Tensor Dh, Tensor Dgate, Tensor Dup) : IVariantOp
    {
        public void Gpu<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            SwiGlu.BackwardGpu<T, S>(K, Gate.View<T>(), Up.View<T>(), Dh.View<T>(), Dgate.View<T>(), Dup.View<T>());
        public void Cpu<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            SwiGlu.BackwardCpu<T, S>(Gate.Host<T>(), Up.Host<T>(), Dh.Host<T>(), Dgate.Host<T>(), Dup.Host<T>());
    }
}
