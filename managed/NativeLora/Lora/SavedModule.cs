using NativeLora.Devices;
using NativeLora.Kernels;
using NativeLora.Ops;
using NativeLora.Tensors;
using NativeLora.Training;

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
    /// <summary>The master, its gradient and its compute copy, as the one entry of an arena (one launch per step each).</summary>
    public ParameterArena Arena { get; }
    public Tensor Master => Arena.Value(0);
    public Tensor Compute => Arena.ComputeCopy(0);
    public Tensor Grad => Arena.Grad(0);

    public SavedModule(ComputeDevice device, KernelSet k, string module, Tensor baseWeight)
    {
        Module = module;
        ParameterName = PeftAdapterFile.SavedParameter(module);
        Arena = new ParameterArena(device, k, baseWeight.DType, new[] { (ParameterName, baseWeight.Shape) });
        ElementwiseOp.Cast(k, baseWeight, Master);
        Arena.SyncCompute(k);
    }

    public void Dispose() => Arena.Dispose();
}
