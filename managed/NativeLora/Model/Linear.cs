using NativeLora.Kernels;
using NativeLora.Lora;
using NativeLora.Ops;
using NativeLora.Tensors;

namespace NativeLora.Model;

/// <summary>
/// y = x·Wᵀ (+ b) (+ s·dropout(x)·Aᵀ·Bᵀ with a LoRA adapter), W [out, in] as HF stores it.
/// Backward: dx (+)= dy·W (+ the adapter's part); dW += dyᵀ·x and db += Σ dy when base gradients are
/// kept (f32, accumulated across micro-batches; zeroed by the trainer); the adapter's own gradients
/// accumulate in its module.
/// </summary>
public sealed class Linear
{
    public string Name { get; }
    public Tensor Weight { get; }
    public Tensor? Bias { get; }
    public Tensor? WeightGrad { get; set; }
    public Tensor? BiasGrad { get; set; }

    /// <summary>The LoRA adapter on this layer, if any (the base weight stays frozen).</summary>
    public LoraModule? Lora { get; set; }

    public Linear(string name, Tensor weight, Tensor? bias)
    {
        Name = name;
        Weight = weight;
        Bias = bias;
    }

    public int OutFeatures => Weight.Dim(0);
    public int InFeatures => Weight.Dim(1);

    /// <summary>Returns what the adapter's backward needs besides x, or null without an adapter.</summary>
    public LoraSaved? Forward(KernelSet k, Tensor x, Tensor y)
    {
        Gemm.Run(x, Weight, y, transB: true);
        // DoRA without dropout reuses x·W0ᵀ before the bias
        using var noBias = Bias != null && Lora is { IsDora: true, EffectiveDropout: 0f } ? y.Device.Allocate(y.DType, y.Shape) : null;
        if (noBias != null) y.CopyTo(noBias);
        if (Bias != null) ElementwiseOp.AddBias(k, y, Bias);
        return Lora == null ? null : LoraOp.Forward(k, Lora, x, y, Weight, noBias ?? y);
    }

    /// <summary>dx is written (accumulate=false) or added to (accumulate=true); null skips it.</summary>
    public void Backward(KernelSet k, Tensor x, LoraSaved? saved, Tensor dy, Tensor? dx, bool accumulate)
    {
        if (dx != null) Gemm.Run(dy, Weight, dx, beta: accumulate ? 1f : 0f);
        if (WeightGrad != null) Gemm.Run(dy, x, WeightGrad, transA: true, beta: 1f);
        if (BiasGrad != null) ElementwiseOp.BiasGrad(k, dy, BiasGrad);
        if (Lora != null) LoraOp.Backward(k, Lora, x, saved ?? throw new InvalidOperationException($"{Name}: the adapter's forward state is missing"), dy, dx, Weight);
    }
}
