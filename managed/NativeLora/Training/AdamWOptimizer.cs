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
    private sealed record Slot(string Name, Tensor Param, Tensor Grad, Tensor M, Tensor V);

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

    public AdamWOptimizer(ComputeDevice device, IEnumerable<(string Name, Tensor Param, Tensor Grad)> parameters,
        float beta1 = 0.9f, float beta2 = 0.999f, float eps = 1e-8f, float weightDecay = 0f, bool paged = false)
    {
        _k = device.Kernels;
        _device = device;
        Paged = paged;
        Beta1 = beta1; Beta2 = beta2; Epsilon = eps; WeightDecay = weightDecay;
        var list = parameters.ToList();
        if (paged)
        {
            // never ask for more managed memory than the device has free
            long need = list.Sum(x => 2 * x.Param.ElementCount * 4);
            var (free, _) = device.MemoryInfo();
            if ((ulong)need > free)
                throw new OutOfMemoryException($"paged AdamW states need {need:N0} bytes; the device reports {free:N0} free");
        }
        foreach (var (name, p, g) in list)
        {
            if (p.DType != DType.F32 || g.DType != DType.F32) throw new ArgumentException($"{name}: AdamW needs f32 parameters and gradients");
            var m = paged ? device.AllocatePaged(DType.F32, p.Shape) : device.Allocate(DType.F32, p.Shape);
            var v = paged ? device.AllocatePaged(DType.F32, p.Shape) : device.Allocate(DType.F32, p.Shape);
            if (paged)
                foreach (var t in new[] { m, v }) Native.NativeCore.ManagedAdvise(t.DataPointer, (ulong)t.ByteLength, Native.NlMemAdvice.PreferHost);
            ElementwiseOp.Zero(_k, m);
            ElementwiseOp.Zero(_k, v);
            _slots.Add(new Slot(name, p, g, m, v));
        }
        _partial = device.Allocate(DType.F32, 4096);
    }

    public long ParameterCount => _slots.Sum(s => s.Param.ElementCount);

    public void ZeroGradients()
    {
        foreach (var s in _slots) ElementwiseOp.Zero(_k, s.Grad);
    }

    /// <summary>‖g‖₂ over every gradient, summed in a fixed order on the host (deterministic; NaN/∞ propagate).</summary>
    public double GradientNorm()
    {
        double total = 0;
        foreach (var s in _slots)
        {
            int count = AdamW.SumOfSquares(_k, s.Grad.View<float>(), _partial.View<float>());
            var partial = _partial.ToArray<float>();
            for (int i = 0; i < count; i++) total += partial[i];
        }
        return Math.Sqrt(total);
    }

    /// <summary>One update with learning rate lr; gradients are multiplied by gradScale first (clipping).</summary>
    public void Step(float lr, float gradScale)
    {
        StepCount++;
        foreach (var s in _slots)
        {
            if (Paged) // bring the pages to the GPU for the update; they may be evicted again afterwards
                foreach (var t in new[] { s.M, s.V }) Native.NativeCore.ManagedPrefetch(t.DataPointer, (ulong)t.ByteLength, toDevice: true);
            AdamW.Update(_k, s.Param.View<float>(), s.Grad.View<float>(), s.M.View<float>(), s.V.View<float>(),
                lr, Beta1, Beta2, Epsilon, WeightDecay, StepCount, gradScale);
        }
    }

    public void SaveState(SafeTensorsWriter w)
    {
        foreach (var s in _slots)
        {
            w.Add(s.Name + ".exp_avg", SafeTensorsDType.F32, s.M.Shape.Select(d => (long)d).ToArray(), Model.ModelDirectory.Encode(s.M.ToArray<float>(), DType.F32));
            w.Add(s.Name + ".exp_avg_sq", SafeTensorsDType.F32, s.V.Shape.Select(d => (long)d).ToArray(), Model.ModelDirectory.Encode(s.V.ToArray<float>(), DType.F32));
        }
        w.SetMetadata("step", StepCount.ToString());
    }

    public void LoadState(SafeTensorsFile f)
    {
        foreach (var s in _slots)
        {
            foreach (var (key, t) in new[] { (s.Name + ".exp_avg", s.M), (s.Name + ".exp_avg_sq", s.V) })
            {
                if (!f.TryGet(key, out var info)) throw new InvalidDataException($"{f.Path}: optimizer state '{key}' is missing");
                if (info.ElementCount != t.ElementCount) throw new InvalidDataException($"{f.Path}: optimizer state '{key}' has {info.ElementCount} values, expected {t.ElementCount}");
                t.CopyFromBytes(f.GetBytes(key));
            }
        }
        StepCount = f.Metadata.TryGetValue("step", out var st) ? int.Parse(st) : throw new InvalidDataException($"{f.Path}: no optimizer step in its metadata");
    }

    public void Dispose()
    {
        foreach (var s in _slots) { s.M.Dispose(); s.V.Dispose(); }
        _partial.Dispose();
    }
}
