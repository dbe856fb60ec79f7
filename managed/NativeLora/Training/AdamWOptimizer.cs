using NativeLora.Devices;
using NativeLora.Kernels;
using NativeLora.Ops;
using NativeLora.SafeTensors;
using NativeLora.Tensors;

namespace NativeLora.Training;

/// <summary>
/// AdamW over the adapter's f32 parameters with f32 moments (kernel: Kernels/AdamW.cs), the
/// global gradient norm for clipping, and exact save/load of its state for resumable checkpoints.
/// It works on <see cref="ParameterArena"/>s: each arena is one or two runs of back-to-back tensors (8-bit and 32-bit
/// state, as bitsandbytes picks per tensor), and zeroing, the norm and the update are one launch per run, not per
/// tensor (PyTorch's fused/foreach AdamW does the same). The state of each tensor is a view of its run's state, so the
/// checkpoint keeps one entry per tensor.
/// </summary>
public sealed class AdamWOptimizer : IDisposable
{
    // A run: consecutive arena entries updated by one launch. 32-bit runs use M and V; 8-bit runs use the codes QM/QV
    // (u8) with one absmax per block of 256, each block inside one tensor (the arena aligns tensors to 256 elements).
    private sealed record Run(Tensor Param, Tensor Grad, Tensor? M, Tensor? V, Tensor? QM, Tensor? QV, Tensor? AbsM, Tensor? AbsV)
    {
        public bool EightBit => QM != null;
        public IEnumerable<Tensor> States => new[] { M, V, QM, QV, AbsM, AbsV }.Where(t => t != null)!;
    }

    private readonly List<Run> _runs = new();
    // the checkpoint's entries: each tensor's state as views of its run's state, keyed by the tensor's name
    private readonly List<(string Key, Tensor Tensor)> _stateViews = new();
    private readonly List<ParameterArena> _arenas;
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

    /// <summary>With 8-bit moments (bitsandbytes' blockwise dynamic quantization), tensors under this many elements keep 32-bit state, as bitsandbytes does.</summary>
    public const long MinEightBitElementsDefault = 4096;

    public AdamWOptimizer(ComputeDevice device, IEnumerable<ParameterArena> arenas,
        float beta1 = 0.9f, float beta2 = 0.999f, float eps = 1e-8f, float weightDecay = 0f, bool paged = false,
        bool eightBit = false, long minEightBitElements = MinEightBitElementsDefault, KernelSet? kernels = null)
    {
        _k = kernels ?? device.Kernels; // tests count the GPU variants' launches on the CPU
        _device = device;
        Paged = paged;
        Beta1 = beta1; Beta2 = beta2; Epsilon = eps; WeightDecay = weightDecay;
        _arenas = arenas.ToList();
        bool Quantized(ParameterArena.Entry e) => eightBit && e.Count >= minEightBitElements;
        // runs: maximal stretches of consecutive entries with the same kind of state
        var spans = new List<(ParameterArena Arena, int First, int Last)>();
        foreach (var arena in _arenas)
            for (int i = 0; i < arena.Entries.Count;)
            {
                int j = i;
                while (j + 1 < arena.Entries.Count && Quantized(arena.Entries[j + 1]) == Quantized(arena.Entries[i])) j++;
                spans.Add((arena, i, j));
                i = j + 1;
            }
        if (paged)
        {
            // never ask for more managed memory than the device has free
            long need = spans.Sum(x => 2 * (x.Arena.Entries[x.Last].End - x.Arena.Entries[x.First].Offset) * (Quantized(x.Arena.Entries[x.First]) ? 1 : 4));
            var (free, _) = device.MemoryInfo();
            if ((ulong)need > free)
                throw new OutOfMemoryException($"paged AdamW states need {need:N0} bytes; the device reports {free:N0} free");
        }
        try
        {
            foreach (var (arena, first, last) in spans) AddRun(arena, first, last, Quantized(arena.Entries[first]));
        }
        catch
        {
            Dispose();
            throw;
        }
        _partial = device.Allocate(DType.F32, Math.Max(1, _runs.Count) * PartialsPerRun);
        if (eightBit)
        {
            _mapSigned = device.Allocate(DType.F32, 256);
            _mapSigned.CopyFrom<float>(Nf4.SignedDynamicMap());
            _mapUnsigned = device.Allocate(DType.F32, 256);
            _mapUnsigned.CopyFrom<float>(Nf4.UnsignedDynamicMap());
        }
    }

    private void AddRun(ParameterArena arena, int first, int last, bool eightBit)
    {
        long start = arena.Entries[first].Offset, length = arena.Entries[last].End - start;
        Tensor Alloc(DType t, long n) => Paged ? _device.AllocatePaged(t, (int)n) : _device.Allocate(t, (int)n);
        var param = arena.Values.Slice((int)start, (int)length);
        var grad = arena.Grads.Slice((int)start, (int)length);
        Run run;
        if (eightBit)
        {
            long blocks = (length + AdamW8bit.BlockSize - 1) / AdamW8bit.BlockSize;
            run = new Run(param, grad, null, null, Alloc(DType.U8, length), Alloc(DType.U8, length), Alloc(DType.F32, blocks), Alloc(DType.F32, blocks));
            // every code starts at the map's exact zero, so the padding between tensors decodes to a zero moment whatever
            // the block's absmax (also after a resume, which restores only the tensors' own codes)
            run.QM!.FillBytes((byte)Array.IndexOf(Nf4.SignedDynamicMap(), 0f));
            run.QV!.FillBytes((byte)Array.IndexOf(Nf4.UnsignedDynamicMap(), 0f));
            ElementwiseOp.Zero(_k, run.AbsM!); // absmax 0: every moment starts at exactly 0
            ElementwiseOp.Zero(_k, run.AbsV!);
        }
        else
        {
            run = new Run(param, grad, Alloc(DType.F32, length), Alloc(DType.F32, length), null, null, null, null);
            ElementwiseOp.Zero(_k, run.M!);
            ElementwiseOp.Zero(_k, run.V!);
        }
        _runs.Add(run);
        if (Paged)
            foreach (var t in run.States) Native.NativeCore.ManagedAdvise(t.DataPointer, (ulong)t.ByteLength, Native.NlMemAdvice.PreferHost);
        for (int i = first; i <= last; i++)
        {
            var e = arena.Entries[i];
            int at = (int)(e.Offset - start), count = (int)e.Count;
            if (eightBit)
            {
                int b0 = at / AdamW8bit.BlockSize, nb = (count + AdamW8bit.BlockSize - 1) / AdamW8bit.BlockSize;
                _stateViews.Add((e.Name + ".exp_avg.q8", run.QM!.Slice(at, count)));
                _stateViews.Add((e.Name + ".exp_avg.absmax", run.AbsM!.Slice(b0, nb)));
                _stateViews.Add((e.Name + ".exp_avg_sq.q8", run.QV!.Slice(at, count)));
                _stateViews.Add((e.Name + ".exp_avg_sq.absmax", run.AbsV!.Slice(b0, nb)));
            }
            else
            {
                _stateViews.Add((e.Name + ".exp_avg", run.M!.Slice(at, count).Reshape(e.Shape)));
                _stateViews.Add((e.Name + ".exp_avg_sq", run.V!.Slice(at, count).Reshape(e.Shape)));
            }
        }
    }

    /// <summary>Runs of back-to-back tensors, one launch each per update (1 or 2 per arena).</summary>
    public int RunCount => _runs.Count;

    /// <summary>One memset per arena.</summary>
    public void ZeroGradients()
    {
        foreach (var a in _arenas) a.ZeroGradients(_k);
    }

    /// <summary>
    /// ‖g‖₂ over every gradient, summed in a fixed order on the host (deterministic; NaN/∞ propagate). One
    /// sum-of-squares launch per run, every run's partial sums in its own region of one buffer, read back once.
    /// </summary>
    public double GradientNorm() => Math.Sqrt(AdamWOp.SumOfSquares(_k, _runs.Select(r => r.Grad).ToList(), _partial, PartialsPerRun));

    private const int PartialsPerRun = 256;

    /// <summary>One update with learning rate lr; gradients are multiplied by gradScale first (clipping). One launch per run.</summary>
    public void Step(float lr, float gradScale)
    {
        StepCount++;
        foreach (var r in _runs)
        {
            if (Paged) // bring the pages to the GPU for the update; they may be evicted again afterwards
                foreach (var t in r.States) Native.NativeCore.ManagedPrefetch(t.DataPointer, (ulong)t.ByteLength, toDevice: true);
            if (r.EightBit)
            {
                AdamW8bit.Update(_k, r.Param.View<float>(), r.Grad.View<float>(), r.QM!.View<byte>(), r.QV!.View<byte>(), r.AbsM!.View<float>(), r.AbsV!.View<float>(),
                    _mapSigned!.View<float>(), _mapUnsigned!.View<float>(), lr, Beta1, Beta2, Epsilon, WeightDecay, StepCount, gradScale);
                continue;
            }
            AdamWOp.Update(_k, r.Param, r.Grad, r.M!, r.V!, lr, Beta1, Beta2, Epsilon, WeightDecay, StepCount, gradScale);
        }
    }

    public void SaveState(SafeTensorsWriter w)
    {
        foreach (var (key, t) in _stateViews)
            w.Add(key, t.DType == DType.U8 ? SafeTensorsDType.U8 : SafeTensorsDType.F32, t.Shape.Select(d => (long)d).ToArray(), t.ToBytes());
        w.SetMetadata("step", StepCount.ToString());
    }

    public void LoadState(SafeTensorsFile f)
    {
        foreach (var (key, t) in _stateViews)
        {
            if (!f.TryGet(key, out var info)) throw new InvalidDataException($"{f.Path}: optimizer state '{key}' is missing (was the run started with another optim?)");
            if (info.ByteLength != t.ByteLength) throw new InvalidDataException($"{f.Path}: optimizer state '{key}' has {info.ByteLength} bytes, expected {t.ByteLength}");
            t.CopyFromBytes(f.GetBytes(key));
        }
        StepCount = f.Metadata.TryGetValue("step", out var st) ? int.Parse(st) : throw new InvalidDataException($"{f.Path}: no optimizer step in its metadata");
    }

    public void Dispose()
    {
        foreach (var r in _runs)
            foreach (var t in r.States) t.Dispose();
        _mapSigned?.Dispose();
        _mapUnsigned?.Dispose();
        _partial?.Dispose();
    }
}
