using System.Collections.Concurrent;
using System.Reflection;
using ILGPU;
using ILGPU.Runtime;

namespace NativeLora.Kernels;

/// <summary>
/// Kernels of one accelerator, compiled once and cached, plus the variant switch: GPU variants
/// (one group per row, shared memory, warp shuffles) or barrier-free CPU
/// variants (one thread per row or element; ILGPU's CPU accelerator emulates barriers at ~100×
/// their cost). The device picks the variant; tests also run the GPU variants on the CPU
/// accelerator at small sizes so both pass the same checks.
/// </summary>
public sealed class KernelSet
{
    private readonly ConcurrentDictionary<MethodInfo, Delegate> _cache = new();

    public Accelerator Accelerator { get; }
    public bool GpuVariants { get; }

    /// <summary>Threads per group of the row-per-group kernels: a multiple of the warp size, at most 256.</summary>
    public int RowGroupSize { get; }

    public KernelSet(Accelerator accelerator, bool gpuVariants)
    {
        Accelerator = accelerator;
        GpuVariants = gpuVariants;
        int warp = accelerator.WarpSize;
        int max = Math.Min(256, accelerator.MaxNumThreadsPerGroup);
        RowGroupSize = Math.Max(warp, max / warp * warp);
    }

    /// <summary>
    /// Threads for an elementwise kernel over n elements, and the elements per thread. On a GPU: one
    /// thread per element (chunk 1, coalesced). On ILGPU's CPU accelerator each thread costs about a
    /// microsecond of scheduling, so a few threads per core each take a contiguous chunk.
    /// </summary>
    public (int Threads, long Chunk) ElementLaunch(long n)
    {
        if (n <= 0) return (0, 1);
        long threads = Accelerator.AcceleratorType == AcceleratorType.CPU ? Math.Min(n, 4L * Environment.ProcessorCount) : Math.Min(n, int.MaxValue);
        long chunk = (n + threads - 1) / threads;
        return ((int)((n + chunk - 1) / chunk), chunk);
    }

    private long _launches;

    /// <summary>
    /// Kernel launches through this set so far. Every launcher calls <see cref="Load"/> once right before it
    /// launches, so the loads count the launches (the benchmarks report launches per step and per layer).
    /// </summary>
    public long Launches => Interlocked.Read(ref _launches);

    /// <summary>Loads (once) the compiled form of <paramref name="kernel"/>, for one launch.</summary>
    public TDelegate Load<TDelegate>(Delegate kernel, Func<Accelerator, TDelegate> load) where TDelegate : Delegate
    {
        Interlocked.Increment(ref _launches);
        return (TDelegate)_cache.GetOrAdd(kernel.Method, _ => load(Accelerator));
    }

    /// <summary>One group per row with dynamic shared memory for <see cref="GroupReduce"/>.</summary>
    public KernelConfig RowConfig(int rows) =>
        new(rows, RowGroupSize, SharedMemoryConfig.RequestDynamic<float>(GroupReduce.ScratchLength(RowGroupSize, Accelerator.WarpSize)));
}
