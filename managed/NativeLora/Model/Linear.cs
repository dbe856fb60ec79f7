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
    private Tensor? _weight;

    /// <summary>The weight in the compute dtype; a QLoRA layer has none (see <see cref="Quantized"/> and <see cref="AcquireWeight"/>).</summary>
    public Tensor Weight => _weight ?? throw new InvalidOperationException($"{Name} is stored in NF4; use AcquireWeight");

    /// <summary>The NF4 base weight of a QLoRA layer (frozen), or null.</summary>
    public Quantization.Nf4Tensor? Quantized { get; private set; }
    public Tensor? Bias { get; }
    public Tensor? WeightGrad { get; set; }
    public Tensor? BiasGrad { get; set; }

    /// <summary>The LoRA adapter on this layer, if any (the base weight stays frozen).</summary>
    public LoraModule? Lora { get; set; }

    /// <summary>Served adapters of this layer, selected per row at inference (see <see cref="LoraSlots"/>), or null.</summary>
    public LinearLoraSlots? ServedAdapters { get; set; }

    public Linear(string name, Tensor weight, Tensor? bias)
    {
        Name = name;
        _weight = weight;
        Bias = bias;
    }

    public int OutFeatures => _weight?.Dim(0) ?? Quantized!.Shape[0];
    public int InFeatures => _weight?.Dim(1) ?? Quantized!.Shape[1];

    /// <summary>
    /// QLoRA: replaces the weight by its NF4 form (double-quantized, bitsandbytes' layout) and frees
    /// it. Compute then dequantizes the layer into a pooled scratch buffer for each GEMM — the
    /// "dequantize one layer at a time" strategy; the buffer is reused through the device pool.
    /// </summary>
    public void Quantize(KernelSet k)
    {
        if (Quantized != null) return;
        if (WeightGrad != null) throw new InvalidOperationException($"{Name}: a trained base weight cannot be quantized");
        Quantized = Quantization.Nf4Tensor.Quantize(k, Weight);
        _weight!.Dispose();
        _weight = null;
    }

    /// <summary>The weight for one computation: itself, or the NF4 weight dequantized into scratch (dispose it after).</summary>
    public WeightLease AcquireWeight(KernelSet k)
    {
        if (_weight != null) return new WeightLease(_weight, owned: false);
        var q = Quantized!;
        var scratch = q.Packed.Device.Allocate(q.DType, q.Shape);
        q.Dequantize(k, scratch);
        return new WeightLease(scratch, owned: true);
    }

    public readonly struct WeightLease(Tensor tensor, bool owned) : IDisposable
    {
        public Tensor Tensor { get; } = tensor;
        public void Dispose()
        {
            if (owned) Tensor.Dispose();
        }
    }

    /// <summary>
    /// Returns what the adapter's backward needs besides x, or null without an adapter. adapterSlots
    /// (I32 [N], inference only) adds each row's served adapter, −1 for none.
    /// </summary>
    public LoraSaved? Forward(KernelSet k, Tensor x, Tensor y, Tensor? adapterSlots = null)
    {
        using var lease = AcquireWeight(k);
        var weight = lease.Tensor;
        Gemm.Run(x, weight, y, transB: true);
        // DoRA without dropout reuses x·W0ᵀ before the bias
        using var noBias = Bias != null && Lora is { IsDora: true, EffectiveDropout: 0f } ? y.Device.Allocate(y.DType, y.Shape) : null;
        if (noBias != null) y.CopyTo(noBias);
        if (Bias != null) ElementwiseOp.AddBias(k, y, Bias);
        if (adapterSlots != null && ServedAdapters != null) MultiLoraOp.Forward(k, ServedAdapters, x, y, adapterSlots);
        return Lora == null ? null : LoraOp.Forward(k, Lora, x, y, weight, noBias ?? y);
    }

    /// <summary>dx is written (accumulate=false) or added to (accumulate=true); null skips it.</summary>
    public void Backward(KernelSet k, Tensor x, LoraSaved? saved, Tensor dy, Tensor? dx, bool accumulate)
    {
        using var lease = AcquireWeight(k);
        var weight = lease.Tensor;
        if (dx != null) Gemm.Run(dy, weight, dx, beta: accumulate ? 1f : 0f);
        if (WeightGrad != null) Gemm.Run(dy, x, WeightGrad, transA: true, beta: 1f);
        if (BiasGrad != null) ElementwiseOp.BiasGrad(k, dy, BiasGrad);
        if (Lora != null) LoraOp.Backward(k, Lora, x, saved ?? throw new InvalidOperationException($"{Name}: the adapter's forward state is missing"), dy, dx, weight);
    }
}
