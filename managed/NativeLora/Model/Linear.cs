using NativeLora.Devices;
using NativeLora.Kernels;
using NativeLora.Lora;
using NativeLora.Ops;
using NativeLora.Quantization;
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

    /// <summary>How a QLoRA layer computes its base product: fused NF4 kernels or dequantize-then-GEMM (see <see cref="QloraMatmul"/>).</summary>
    public QloraMatmul BaseMatmul { get; set; } = QloraMatmul.Auto;

    public Linear(string name, Tensor weight, Tensor? bias)
    {
        Name = name;
        _weight = weight;
        Bias = bias;
    }

    /// <summary>A QLoRA layer built from a weight quantized as it was loaded (the model owns the state): as <see cref="Quantize"/> leaves it.</summary>
    public Linear(string name, Quantization.Nf4Tensor quantized, Tensor? bias)
    {
        Name = name;
        Quantized = quantized;
        Bias = bias;
    }

    public int OutFeatures => _weight?.Dim(0) ?? Quantized!.Shape[0];
    public int InFeatures => _weight?.Dim(1) ?? Quantized!.Shape[1];

    /// <summary>
    /// QLoRA: replaces the weight by its NF4 form (double-quantized, bitsandbytes' layout) and frees
    /// it. Compute then either dequantizes the layer into a pooled scratch buffer for each GEMM — the
    /// "dequantize one layer at a time" strategy — or reads the codes inside fused kernels, as
    /// <see cref="BaseMatmul"/> says.
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

    /// <summary>
    /// The base weight for a product of <paramref name="rows"/> rows: null when the fused NF4 kernels compute it from
    /// the codes, else as <see cref="AcquireWeight"/>. DoRA needs the dense W0 for its column norms, so it never fuses.
    /// </summary>
    private WeightLease? AcquireBase(KernelSet k, int rows, ComputeDevice device)
    {
        if (Quantized == null || !QloraMatmulChoice.PicksFused(BaseMatmul, device, rows)) return AcquireWeight(k);
        if (Lora is not { IsDora: true }) return null;
        if (BaseMatmul == QloraMatmul.Fused)
            throw new InvalidOperationException($"{Name}: DoRA needs the dense base weight for its norms; use qlora_matmul scratch or auto");
        return AcquireWeight(k);
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
    /// Returns what the adapter's backward needs besides x, or null without an adapter. adapterRows
    /// (inference only) adds each row's served adapter.
    /// </summary>
    public LoraSaved? Forward(KernelSet k, Tensor x, Tensor y, AdapterRows? adapterRows = null) => Forward(k, x, y, adapterRows, withAdapter: true);

    private LoraSaved? Forward(KernelSet k, Tensor x, Tensor y, AdapterRows? adapterRows, bool withAdapter)
    {
        using var lease = AcquireBase(k, x.Dim(0), x.Device);
        var weight = lease?.Tensor;
        if (weight != null) Gemm.Run(x, weight, y, transB: true);
        else Nf4MatmulOp.Forward(k, Quantized!, x, y);
        var lora = withAdapter ? Lora : null;
        using var noBias = Bias != null && lora != null && LoraOp.ReadsBaseProduct(lora) ? y.Device.Allocate(y.DType, y.Shape) : null;
        if (noBias != null) y.CopyTo(noBias);
        if (Bias != null) ElementwiseOp.AddBias(k, y, Bias);
        if (adapterRows != null && ServedAdapters != null && ServedAdapters.Touches(adapterRows.Host))
            MultiLoraOp.Forward(k, ServedAdapters, x, y, adapterRows.Slots);
        return lora == null ? null : LoraOp.Forward(k, lora, x, y, weight, noBias ?? y);
    }

    /// <summary>dx is written (accumulate=false) or added to (accumulate=true); null skips it.</summary>
    public void Backward(KernelSet k, Tensor x, LoraSaved? saved, Tensor dy, Tensor? dx, bool accumulate) => Backward(k, x, saved, dy, dx, accumulate, withAdapter: true);

    private void Backward(KernelSet k, Tensor x, LoraSaved? saved, Tensor dy, Tensor? dx, bool accumulate, bool withAdapter)
    {
        using var lease = AcquireBase(k, dy.Dim(0), dy.Device);
        var weight = lease?.Tensor;
        if (dx != null && weight != null) Gemm.Run(dy, weight, dx, beta: accumulate ? 1f : 0f);
        else if (dx != null) Nf4MatmulOp.BackwardData(k, Quantized!, dy, dx, accumulate);
        if (WeightGrad != null) Gemm.Run(dy, x, WeightGrad, transA: true, beta: 1f);
        if (BiasGrad != null) ElementwiseOp.BiasGrad(k, dy, BiasGrad);
        if (Lora != null && withAdapter) LoraOp.Backward(k, Lora, x, saved ?? throw new InvalidOperationException($"{Name}: the adapter's forward state is missing"), dy, dx, weight);
    }

    /// <summary>
    /// The projections that read one input (q, k, v; gate, up) on x: each one's base product into ys[i], and their
    /// adapters as one stacked low-rank product where <see cref="LoraOp.StackedA"/> allows it, else one by one.
    /// </summary>
    public static LoraSaved?[] ForwardShared(KernelSet k, Linear[] lins, Tensor x, Tensor[] ys, AdapterRows? adapterRows)
    {
        var adapted = Enumerable.Range(0, lins.Length).Where(i => lins[i].Lora != null).ToArray();
        var modules = adapted.Select(i => lins[i].Lora!).ToArray();
        var stackedA = LoraOp.StackedA(modules);
        var saved = new LoraSaved?[lins.Length];
        try
        {
            for (int i = 0; i < lins.Length; i++) saved[i] = lins[i].Forward(k, x, ys[i], adapterRows, withAdapter: stackedA == null);
            if (stackedA == null) return saved;
            var states = LoraOp.ForwardStacked(modules, stackedA, x, adapted.Select(i => ys[i]).ToArray());
            for (int j = 0; j < adapted.Length; j++) saved[adapted[j]] = states[j];
            return saved;
        }
        catch
        {
            foreach (var st in saved) st?.Dispose();
            throw;
        }
    }

    /// <summary>The backward of <see cref="ForwardShared"/>: dx (written, then accumulated) gets every projection's part.</summary>
    public static void BackwardShared(KernelSet k, Linear[] lins, Tensor x, LoraSaved?[] saved, Tensor[] dys, Tensor? dx)
    {
        var adapted = Enumerable.Range(0, lins.Length).Where(i => lins[i].Lora != null).ToArray();
        bool stacked = adapted.Length > 0 && saved[adapted[0]]?.Stacked == true;
        for (int i = 0; i < lins.Length; i++) lins[i].Backward(k, x, saved[i], dys[i], dx, accumulate: i > 0, withAdapter: !stacked);
        if (!stacked) return;
        var modules = adapted.Select(i => lins[i].Lora!).ToArray();
        var stackedA = LoraOp.StackedA(modules) ?? throw new InvalidOperationException($"{lins[adapted[0]].Name}: the adapters were stacked in the forward and cannot be now");
        LoraOp.BackwardStacked(modules, stackedA, LoraOp.StackedA(modules, grad: true)!, x, adapted.Select(i => saved[i]!).ToArray(), adapted.Select(i => dys[i]).ToArray(), dx);
    }
}
