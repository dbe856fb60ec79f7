using System.Collections.Concurrent;
using System.Reflection;
using ILGPU;
using ILGPU.Runtime;

namespace NativeLora.Kernels;

/// <summary>
/// Kernels of one accelerator, compiled once and cached, plus the variant switch the Ops read
/// (FloatDispatch): GPU variants (ILGPU kernels: one group per row, shared memory, warp shuffles,
/// flash attention) or CPU variants (host SIMD kernels over the CPU accelerator's host memory, and
/// ILGPU's barrier-free kernels where a family has no host kernel; ILGPU's CPU accelerator emulates
/// barriers at ~100× their cost). The device picks the variant; tests also run the GPU variants on
/// the CPU accelerator at small sizes so both pass the same checks.
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
        if (!gpuVariants && accelerator.AcceleratorType != AcceleratorType.CPU)
            throw new ArgumentException($"the CPU variants run on host memory: they need ILGPU's CPU accelerator, not {accelerator.Name}");
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

    /// <summary>
    /// Launches an implicitly grouped kernel (ILGPU picks the group size) over <paramref name="extent"/> threads, loading it
    /// once. One overload per argument count, as ILGPU's own loaders: a kernel's delegate type is its parameter list.
    /// </summary>
    public void Launch<T1, T2>(Action<Index1D, T1, T2> kernel, Index1D extent, T1 a1, T2 a2)
        where T1 : struct where T2 : struct =>
        Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(extent, a1, a2);
    public void Launch<T1, T2, T3>(Action<Index1D, T1, T2, T3> kernel, Index1D extent, T1 a1, T2 a2, T3 a3)
        where T1 : struct where T2 : struct where T3 : struct =>
        Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(extent, a1, a2, a3);
    public void Launch<T1, T2, T3, T4>(Action<Index1D, T1, T2, T3, T4> kernel, Index1D extent, T1 a1, T2 a2, T3 a3, T4 a4)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct =>
        Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(extent, a1, a2, a3, a4);
    public void Launch<T1, T2, T3, T4, T5>(Action<Index1D, T1, T2, T3, T4, T5> kernel, Index1D extent, T1 a1, T2 a2, T3 a3, T4 a4, T5 a5)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct =>
        Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(extent, a1, a2, a3, a4, a5);
    public void Launch<T1, T2, T3, T4, T5, T6>(Action<Index1D, T1, T2, T3, T4, T5, T6> kernel, Index1D extent, T1 a1, T2 a2, T3 a3, T4 a4, T5 a5, T6 a6)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct =>
        Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(extent, a1, a2, a3, a4, a5, a6);
    public void Launch<T1, T2, T3, T4, T5, T6, T7>(Action<Index1D, T1, T2, T3, T4, T5, T6, T7> kernel, Index1D extent, T1 a1, T2 a2, T3 a3, T4 a4, T5 a5, T6 a6, T7 a7)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct =>
        Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(extent, a1, a2, a3, a4, a5, a6, a7);
    public void Launch<T1, T2, T3, T4, T5, T6, T7, T8>(Action<Index1D, T1, T2, T3, T4, T5, T6, T7, T8> kernel, Index1D extent, T1 a1, T2 a2, T3 a3, T4 a4, T5 a5, T6 a6, T7 a7, T8 a8)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct =>
        Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(extent, a1, a2, a3, a4, a5, a6, a7, a8);
    public void Launch<T1, T2, T3, T4, T5, T6, T7, T8, T9>(Action<Index1D, T1, T2, T3, T4, T5, T6, T7, T8, T9> kernel, Index1D extent, T1 a1, T2 a2, T3 a3, T4 a4, T5 a5, T6 a6, T7 a7, T8 a8, T9 a9)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct where T9 : struct =>
        Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(extent, a1, a2, a3, a4, a5, a6, a7, a8, a9);
    public void Launch<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10>(Action<Index1D, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10> kernel, Index1D extent, T1 a1, T2 a2, T3 a3, T4 a4, T5 a5, T6 a6, T7 a7, T8 a8, T9 a9, T10 a10)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct where T9 : struct where T10 : struct =>
        Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(extent, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10);
    public void Launch<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11>(Action<Index1D, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11> kernel, Index1D extent, T1 a1, T2 a2, T3 a3, T4 a4, T5 a5, T6 a6, T7 a7, T8 a8, T9 a9, T10 a10, T11 a11)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct where T9 : struct where T10 : struct where T11 : struct =>
        Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(extent, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11);
    public void Launch<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12>(Action<Index1D, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12> kernel, Index1D extent, T1 a1, T2 a2, T3 a3, T4 a4, T5 a5, T6 a6, T7 a7, T8 a8, T9 a9, T10 a10, T11 a11, T12 a12)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct where T9 : struct where T10 : struct where T11 : struct where T12 : struct =>
        Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(extent, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12);
    public void Launch<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13>(Action<Index1D, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13> kernel, Index1D extent, T1 a1, T2 a2, T3 a3, T4 a4, T5 a5, T6 a6, T7 a7, T8 a8, T9 a9, T10 a10, T11 a11, T12 a12, T13 a13)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct where T9 : struct where T10 : struct where T11 : struct where T12 : struct where T13 : struct =>
        Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(extent, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13);
    public void Launch<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13, T14>(Action<Index1D, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13, T14> kernel, Index1D extent, T1 a1, T2 a2, T3 a3, T4 a4, T5 a5, T6 a6, T7 a7, T8 a8, T9 a9, T10 a10, T11 a11, T12 a12, T13 a13, T14 a14)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct where T9 : struct where T10 : struct where T11 : struct where T12 : struct where T13 : struct where T14 : struct =>
        Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(extent, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14);

    /// <summary>One group per row with dynamic shared memory for <see cref="GroupReduce"/>.</summary>
    public KernelConfig RowConfig(int rows) =>
        new(rows, RowGroupSize, SharedMemoryConfig.RequestDynamic<float>(GroupReduce.ScratchLength(RowGroupSize, Accelerator.WarpSize)));
}
