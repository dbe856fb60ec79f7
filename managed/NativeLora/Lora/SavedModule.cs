using NativeLora.Devices;
using NativeLora.Kernels;
using NativeLora.Ops;
using NativeLora.Tensors;

namespace NativeLora.Lora;

/// <summary>
/// A fully trained copy of embed_tokens or lm_head (PEFT's modules_to_save): an f32 master the
/// optimizer updates, its compute-dtype copy the model runs with, and an f32 gradient. The frozen
/// base weight is left untouched.
/// </summary>
public sealed class SavedModule : IDisposable
{
    public string Module { get; }          // embed_tokens or lm_head
    public string ParameterName { get; }   // model.embed_tokens.weight or lm_head.weight
    public Tensor Master { get; }
    public Tensor Compute { get; }
    public Tensor Grad { get; }

    public SavedModule(ComputeDevice device, KernelSet k, string module, Tensor baseWeight)
    {
        Module = module;
        ParameterName = PeftAdapterFile.SavedParameter(module);
        Master = device.Allocate(DType.F32, baseWeight.Shape);
        ElementwiseOp.Cast(k, baseWeight, Master);
        Compute = baseWeight.DType == DType.F32 ? Master : device.Allocate(baseWeight.DType, baseWeight.Shape);
        Grad = device.Allocate(DType.F32, baseWeight.Shape);
        ElementwiseOp.Zero(k, Grad);
        SyncCompute(k);
    }

    public void SyncCompute(KernelSet k)
    {
        if (!ReferenceEquals(Compute, Master)) ElementwiseOp.Cast(k, Master, Compute);
    }

    public void Dispose()
    {
        Master.Dispose();
        if (!ReferenceEquals(Compute, Master)) Compute.Dispose();
        Grad.Dispose();
    }
}
