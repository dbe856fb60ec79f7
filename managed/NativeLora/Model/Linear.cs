using NativeLora.Kernels;
using NativeLora.Ops;
using NativeLora.Tensors;

namespace NativeLora.Model;

/// <summary>
/// y = x·Wᵀ (+ b), W [out, in] as HF stores it. Backward: dx (+)= dy·W; dW += dyᵀ·x and db += Σ dy
/// when gradients are kept (f32, accumulated across micro-batches; zeroed by the trainer).
/// </summary>
public sealed class Linear
{
    public string Name { get; }
    public Tensor Weight { get; }
    public Tensor? Bias { get; }
    public Tensor? WeightGrad { get; set; }
    public Tensor? BiasGrad { get; set; }

    public Linear(string name, Tensor weight, Tensor? bias)
    {
        Name = name;
        Weight = weight;
        Bias = bias;
    }

    public int OutFeatures => Weight.Dim(0);
    public int InFeatures => Weight.Dim(1);

    public void Forward(KernelSet k, Tensor x, Tensor y)
    {
        Gemm.Run(x, Weight, y, transB: true);
        if (Bias != null) ElementwiseOp.AddBias(k, y, Bias);
    }

    /// <summary>dx is written (accumulate=false) or added to (accumulate=true); null skips it.</summary>
    public void Backward(KernelSet k, Tensor x, Tensor dy, Tensor? dx, bool accumulate)
    {
        if (dx != null) Gemm.Run(dy, Weight, dx, beta: accumulate ? 1f : 0f);
        if (WeightGrad != null) Gemm.Run(dy, x, WeightGrad, transA: true, beta: 1f);
        if (BiasGrad != null) ElementwiseOp.BiasGrad(k, dy, BiasGrad);
    }
}
