using NativeLora.Devices;
using NativeLora.Kernels;
using NativeLora.Ops;
using NativeLora.SafeTensors;
using NativeLora.Tensors;

namespace NativeLora.Training;

/// <summary>
/// AdamW over the adapter's f32 parameters with f32 moments (kernel: Kernels/AdamW.cs), the
/// global gradient norm for clipping, and exact save/load of its state for resumable checkpoints.
/// </summary>
public sealed class AdamWOptimizer : IDisposable
{
    // 32-bit slots use M and V; 8-bit slots use the codes QM/QV (u8) with one absmax per block of 256
    private sealed record Slot(string Name, Tensor Param, Tensor Grad, Tensor? M, Tensor? V, Tensor? QM, Tensor? QV, Tensor? AbsM, Tensor? AbsV)
    {
        public bool EightBit => QM != null;
        public IEnumerable<Tensor> States => new[] { M, V, QM, QV, AbsM, AbsV }.Where(t => t != null)!;
    }

    private readonly List<Slot> _slots = new();
    private readonly Tensor _partial;
    private readonly KernelSet _k;
    public float Beta1 { get; }
    public float Beta2 { get; }
    public float Epsilon { get; }
    public float WeightDecay { get; }
    public int StepCount { get; private set; }

    /// <summary>
    /// paged: the moments live in the native core's unified memory (cudaMallocManaged, preferred on
    /// the host and prefetched to the GPU for each update, so the driver can evict them under memory
    /// pressure — bitsandbytes' paged_adamw_32bit); on the CPU that is ordinary host memory.
    /// </summary>
    public bool Paged { get; }

    private readonly ComputeDevice _device;
    private readonly Tensor? _mapSigned, _mapUnsigned;

    /// <summary>8-bit moments (bitsandbytes' blockwise dynamic quantization) for tensors of at least this many elements; smaller ones keep 32-bit state, as bitsandbytes does.</summary>
    public bool EightBit { get; }
    public const long MinEightBitElementsDefault = 4096;

    public AdamWOptimizer(ComputeDevice device, IEnumerable<(string Name, Tensor Param, Tensor Grad)> parameters,
        float beta1 = 0.9f, float beta2 = 0.999f, float eps = 1e-8f, float weightDecay = 0f, bool paged = false,
        bool eightBit = false, long minEightBitElements = MinEightBitElementsDefault)
    {
        EightBit = eightBit;
        _k = device.Kernels;
        _device = device;
        Paged = paged;
        Beta1 = beta1; Beta2 = beta2; Epsilon = eps; WeightDecay = weightDecay;
        var list = parameters.ToList();
        if (paged)
        {
            // never ask for more managed memory than the device has free
            long need = list.Sum(x => 2 * x.Param.ElementCount * (eightBit ? 1 : 4));
            var (free, _) = device.MemoryInfo();
            if ((ulong)need > free)
                throw new OutOfMemoryException($"paged AdamW states need {need:N0} bytes; the device reports {free:N0} free");
        }
        foreach (var (name, p, g) in list)
        {
            if (p.DType != DType.F32 || g.DType != DType.F32) throw new ArgumentException($"{name}: AdamW needs f32 parameters and gradients");
            Tensor Alloc(DType t, params int[] shape) => paged ? device.AllocatePaged(t, shape) : device.Allocate(t, shape);
            Slot slot;
            if (eightBit && p.ElementCount >= minEightBitElements)
            {
                int blocks = (int)((p.ElementCount + AdamW8bit.BlockSize - 1) / AdamW8bit.BlockSize);
                slot = new Slot(name, p, g, null, null, Alloc(DType.U8, (int)p.ElementCount), Alloc(DType.U8, (int)p.ElementCount), Alloc(DType.F32, blocks), Alloc(DType.F32, blocks));
                slot.QM!.FillBytes(0);
                slot.QV!.FillBytes(0);
                ElementwiseOp.Zero(_k, slot.AbsM!); // absmax 0: every moment starts at exactly 0
                ElementwiseOp.Zero(_k, slot.AbsV!);
            }
            else
            {
                slot = new Slot(name, p, g, Alloc(DType.F32, p.Shape), Alloc(DType.F32, p.Shape), null, null, null, null);
                ElementwiseOp.Zero(_k, slot.M!);
                ElementwiseOp.Zero(_k, slot.V!);
            }
            if (paged)
                foreach (var t in slot.States) Native.NativeCore.ManagedAdvise(t.DataPointer, (ulong)t.ByteLength, Native.NlMemAdvice.PreferHost);
            _slots.Add(slot);
        }
        _partial = device.Allocate(DType.F32, Math.Max(1, _slots.Count) * PartialsPerTensor);
        if (eightBit)
        {
            _mapSigned = device.Allocate(DType.F32, 256);
            _mapSigned.CopyFrom<float>(Nf4.SignedDynamicMap());
            _mapUnsigned = device.Allocate(DType.F32, 256);
            _mapUnsigned.CopyFrom<float>(Nf4.UnsignedDynamicMap());
        }
    }

    public long ParameterCount => _slots.Sum(s => s.Param.ElementCount);

    public void ZeroGradients()
    {
        foreach (var s in _slots) ElementwiseOp.Zero(_k, s.Grad);
    }

    /// <summary>
    /// ‖g‖₂ over every gradient, summed in a fixed order on the host (deterministic; NaN/∞ propagate). Every
    /// tensor's partial sums land in its own region of one buffer, read back once: one device round trip per
    /// step instead of one per tensor (224 for Llama 3.2 1B with LoRA on all projections).
    /// </summary>
    public double GradientNorm()
    {
        var counts = new int[_slots.Count];
        for (int i = 0; i < _slots.Count; i++)
            counts[i] = AdamW.SumOfSquares(_k, _slots[i].Grad.View<float>(), _partial.View<float>().SubView((long)i * PartialsPerTensor, PartialsPerTensor));
        var partial = _partial.ToArray<float>();
        double total = 0;
        for (int i = 0; i < _slots.Count; i++)
            for (int j = 0; j < counts[i]; j++) total += partial[(long)i * PartialsPerTensor + j];
        return Math.Sqrt(total);
    }

    private const int PartialsPerTensor = 256;

    /// <summary>One update with learning rate lr; gradients are multiplied by gradScale first (clipping).</summary>
    public void Step(float lr, float gradScale)
    {
        StepCount++;
        foreach (var s in _slots)
        {
            if (Paged) // bring the pages to the GPU for the update; they may be evicted again afterwards
                foreach (var t in s.States) Native.NativeCore.ManagedPrefetch(t.DataPointer, (ulong)t.ByteLength, toDevice: true);
            if (s.EightBit)
            {
                AdamW8bit.Update(_k, s.Param.View<float>(), s.Grad.View<float>(), s.QM!.View<byte>(), s.QV!.View<byte>(), s.AbsM!.View<float>(), s.AbsV!.View<float>(),
                    _mapSigned!.View<float>(), _mapUnsigned!.View<float>(), lr, Beta1, Beta2, Epsilon, WeightDecay, StepCount, gradScale);
                continue;
            }
            AdamW.Update(_k, s.Param.View<float>(), s.Grad.View<float>(), s.M!.View<float>(), s.V!.View<float>(),
                lr, Beta1, Beta2, Epsilon, WeightDecay, StepCount, gradScale);
        }
    }

    // checkpoint keys of a slot's state tensors
    private static IEnumerable<(string Key, Tensor Tensor)> StateKeys(Slot s) => s.EightBit
        ? new[] { (s.Name + ".exp_avg.q8", s.QM!), (s.Name + ".exp_avg.absmax", s.AbsM!), (s.Name + ".exp_avg_sq.q8", s.QV!), (s.Name + ".exp_avg_sq.absmax", s.AbsV!) }
        : new[] { (s.Name + ".exp_avg", s.M!), (s.Name + ".exp_avg_sq", s.V!) };

    public void SaveState(SafeTensorsWriter w)
    {
        foreach (var s in _slots)
            foreach (var (key, t) in StateKeys(s))
                w.Add(key, t.DType == DType.U8 ? SafeTensorsDType.U8 : SafeTensorsDType.F32, t.Shape.Select(d => (long)d).ToArray(), t.ToBytes());
        w.SetMetadata("step", StepCount.ToString());
    }

    public void LoadState(SafeTensorsFile f)
    {
        foreach (var s in _slots)
            foreach (var (key, t) in StateKeys(s))
            {
                if (!f.TryGet(key, out var info)) throw new InvalidDataException($"{f.Path}: optimizer state '{key}' is missing (was the run started with another optim?)");
                if (info.ByteLength != t.ByteLength) throw new InvalidDataException($"{f.Path}: optimizer state '{key}' has {info.ByteLength} bytes, expected {t.ByteLength}");
                t.CopyFromBytes(f.GetBytes(key));
            }
        StepCount = f.Metadata.TryGetValue("step", out var st) ? int.Parse(st) : throw new InvalidDataException($"{f.Path}: no optimizer step in its metadata");
    }

    public void Dispose()
    {
        foreach (var s in _slots)
            foreach (var t in s.States) t.Dispose();
        _mapSigned?.Dispose();
        _mapUnsigned?.Dispose();
        _partial.Dispose();
    }
}
