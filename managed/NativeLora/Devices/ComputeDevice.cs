using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using NativeLora.Kernels;
using NativeLora.Native;
using NativeLora.Tensors;

namespace NativeLora.Devices;

public enum DeviceKind
{
    Auto,
    Cpu,
    Cuda,
}

/// <summary>
/// The one place that picks the compute backend pair and the one allocator.
/// GPU: ILGPU's CUDA accelerator + the CUDA native core, sharing ILGPU's context and stream.
/// CPU: ILGPU's CPU accelerator + the OpenBLAS native core, sharing host memory.
/// Nothing else in the engine asks "am I on a GPU?": it asks this object's <see cref="Kind"/>.
/// The native core is process-global, so at most one device is open at a time.
/// </summary>
public sealed class ComputeDevice : IDisposable
{
    private static ComputeDevice? s_open;
    private static readonly object s_lock = new();

    public Context Context { get; }
    public Accelerator Accelerator { get; }
    public DeviceKind Kind { get; }
    public string Description { get; }
    public bool IsCuda => Kind == DeviceKind.Cuda;

    /// <summary>The compute dtype when the user says "auto": bf16 mixed precision on a GPU, f32 on the CPU.</summary>
    public DType DefaultComputeDType => IsCuda ? DType.BF16 : DType.F32;

    /// <summary>Parses a --dtype value, resolving "auto" for this device.</summary>
    public DType ResolveDType(string value) => value == "auto" ? DefaultComputeDType : DTypeInfo.Parse(value);

    /// <summary>The compiled kernels of this device, with the variant picked here: GPU variants on CUDA, barrier-free CPU variants otherwise.</summary>
    public KernelSet Kernels { get; }

    private ComputeDevice(Context context, Accelerator accelerator, DeviceKind kind)
    {
        Context = context;
        Accelerator = accelerator;
        Kind = kind;
        Kernels = new KernelSet(accelerator, gpuVariants: kind == DeviceKind.Cuda);
        Allocator = new CachingAllocator(bytes => accelerator.Allocate1D<byte>(bytes));
        Description = kind == DeviceKind.Cuda
            ? $"cuda: {accelerator.Name} ({accelerator.MemorySize / (1 << 20)} MiB), native core {NativeCore.BackendName}"
            : $"cpu: ILGPU CPU accelerator ({Environment.ProcessorCount} threads), native core {NativeCore.BackendName}";
    }

    /// <summary>Parses a --device value: auto, cpu or cuda.</summary>
    public static DeviceKind ParseKind(string s) => s.ToLowerInvariant() switch
    {
        "auto" => DeviceKind.Auto,
        "cpu" => DeviceKind.Cpu,
        "cuda" or "gpu" => DeviceKind.Cuda,
        _ => throw new ArgumentException($"unknown device '{s}' (expected auto, cpu or cuda)"),
    };

    /// <summary>Opens the device. Auto picks CUDA when the native core was built with CUDA and ILGPU sees a GPU.</summary>
    public static ComputeDevice Open(DeviceKind requested = DeviceKind.Auto)
    {
        lock (s_lock)
        {
            if (s_open != null)
                throw new InvalidOperationException("a ComputeDevice is already open; dispose it first (the native core is process-global)");
            // decides which core loads, where both are installed (the first native call loads it)
            Native.NativeLibraryResolver.PreferCpu = requested == DeviceKind.Cpu;
            var nativeIsCuda = NativeCore.IsCuda;
            var kind = requested;
            if (kind == DeviceKind.Auto)
                kind = nativeIsCuda && CudaDeviceCount() > 0 ? DeviceKind.Cuda : DeviceKind.Cpu;

            if (kind == DeviceKind.Cuda && !nativeIsCuda)
                throw new InvalidOperationException(
                    $"--device cuda needs the CUDA native core, but this build's core is '{NativeCore.BackendName}' " +
                    "(CMake did not find the CUDA toolkit). Install it and rebuild with ./build.sh.");
            if (kind == DeviceKind.Cpu && nativeIsCuda)
                throw new InvalidOperationException(
                    "--device cpu needs the CPU native core, but this build's core is 'cuda'. " +
                    "Rebuild with NL_BACKEND=cpu ./build.sh to run on the CPU.");

            ComputeDevice device = kind == DeviceKind.Cuda ? OpenCuda() : OpenCpu();
            s_open = device;
            return device;
        }
    }

    private static int CudaDeviceCount()
    {
        try
        {
            using var probe = Context.Create(b => b.Cuda());
            return probe.GetCudaDevices().Count;
        }
        catch (Exception)
        {
            return 0; // no driver: not a GPU machine
        }
    }

    private static ComputeDevice OpenCpu()
    {
        // One warp of (a power of two ≤ cores) threads, one multiprocessor: every emulated thread is an
        // OS thread, so more than the cores only adds scheduling. Measured on 2 cores: ILGPU's default
        // (16 threads per group) costs ~500 µs per launch, this ~70 µs, and elementwise throughput doubles.
        int warp = 2;
        while (warp * 2 <= Math.Min(32, Environment.ProcessorCount)) warp *= 2;
        var context = Context.Create(b => b.CPU(new CPUDevice(warp, 1, 1)).EnableAlgorithms());
        var accelerator = context.CreateCPUAccelerator(0, CPUAcceleratorMode.Parallel);
        NativeCore.Init(0, 0, 0);
        return new ComputeDevice(context, accelerator, DeviceKind.Cpu);
    }

    private static ComputeDevice OpenCuda()
    {
        var context = Context.Create(b => b.Cuda().EnableAlgorithms());
        var accelerator = context.CreateCudaAccelerator(0);
        // Share one context and one stream: the core adopts ILGPU's CUcontext and puts cuBLAS on ILGPU's stream.
        var stream = ((CudaStream)accelerator.DefaultStream).StreamPtr;
        NativeCore.Init(0, accelerator.NativePtr, stream);
        return new ComputeDevice(context, accelerator, DeviceKind.Cuda);
    }

    // the one allocator of device memory (see CachingAllocator for its scheme)
    private CachingAllocator Allocator { get; }
    private long _pagedBytes, _hostBytes, _memsets;

    /// <summary>Memsets issued on this device so far (with KernelSet.Launches and NativeCore.GemmCalls: the device operations of a step).</summary>
    public long Memsets => Interlocked.Read(ref _memsets);
    internal void CountMemset() => Interlocked.Increment(ref _memsets);

    /// <summary>Peak bytes held by live tensors (their blocks' rounded sizes) since <see cref="ResetPeak"/>; the current figure is <see cref="MemoryStats"/>.Allocated.</summary>
    public long PeakLiveBytes => Allocator.Stats().PeakAllocated;

    /// <summary>The allocator's figures: allocated (live tensors), requested, reserved (segments this process holds on the device), with peaks.</summary>
    public AllocatorStats MemoryStats => Allocator.Stats();

    /// <summary>Bytes of paged (unified) memory held by optimizer states: device memory on a GPU when resident.</summary>
    public long PagedBytes => Interlocked.Read(ref _pagedBytes);

    /// <summary>Bytes of host-resident tensors (<see cref="AllocateHost"/>): not device memory.</summary>
    public long HostTensorBytes => Interlocked.Read(ref _hostBytes);

    /// <summary>Peak device memory this process held through the engine since <see cref="ResetPeak"/>: the allocator's segments plus paged memory (counted at its current size).</summary>
    public long PeakDeviceMemoryBytes => Allocator.Stats().PeakReserved + PagedBytes;

    public void ResetPeak() => Allocator.ResetPeaks();

    /// <summary>Gives the allocator's completely free segments back to the device (e.g. to report true usage or before another process needs memory).</summary>
    public void EmptyCache() => Allocator.EmptyCache();

    internal void Release(CachingAllocator.Block block) => Allocator.Free(block);

    internal void ValidateAllocator() => Allocator.Validate();

    private bool _disposed;

    /// <summary>Allocates an uninitialised tensor in device memory (the one allocator for device tensors).</summary>
    public Tensor Allocate(DType dtype, params int[] shape)
    {
        var bytes = Math.Max(1, Tensor.CountElements(shape) * dtype.SizeOf());
        if (_disposed) throw new ObjectDisposedException(Description);
        CachingAllocator.Block block;
        try
        {
            block = Allocator.Allocate(bytes);
        }
        catch (OutOfMemoryException e)
        {
            throw new OutOfMemoryException($"cannot allocate a {dtype.Name()} tensor of shape [{string.Join(", ", shape)}] ({bytes:N0} bytes) on {Description}: {e.Message}", e);
        }
        return new Tensor(this, block, dtype, shape);
    }

    /// <summary>
    /// Allocates a zeroed tensor in the native core's paged memory (CUDA unified memory that
    /// can be evicted to the host; plain host memory on CPU). Used for optimizer states.
    /// </summary>
    public Tensor AllocatePaged(DType dtype, params int[] shape) => AllocateNative(dtype, shape, host: false);

    /// <summary>
    /// Allocates a zeroed tensor in host memory that kernels read in place: pinned and mapped into the
    /// GPU's address space on CUDA, so a kernel moves only the bytes it reads across the bus (QLoRA's
    /// frozen embedding: the rows a batch gathers); ordinary memory on the CPU. Not device memory.
    /// </summary>
    public Tensor AllocateHost(DType dtype, params int[] shape) => AllocateNative(dtype, shape, host: true);

    // memory the native core allocates outside the caching allocator, counted in PagedBytes or HostTensorBytes
    private Tensor AllocateNative(DType dtype, int[] shape, bool host)
    {
        var bytes = Math.Max(1, Tensor.CountElements(shape) * dtype.SizeOf());
        var ptr = host ? NativeCore.HostAlloc((ulong)bytes) : NativeCore.ManagedAlloc((ulong)bytes);
        Interlocked.Add(ref host ? ref _hostBytes : ref _pagedBytes, bytes);
        var buffer = new ExternalMemoryBuffer(Accelerator, ptr, bytes, p =>
        {
            if (host) NativeCore.HostFree(p);
            else NativeCore.ManagedFree(p);
            Interlocked.Add(ref host ? ref _hostBytes : ref _pagedBytes, -bytes);
        });
        return new Tensor(this, buffer, dtype, shape, onHost: host);
    }

    /// <summary>Waits for all queued kernels and native calls.</summary>
    public void Synchronize()
    {
        Accelerator.Synchronize();
        if (IsCuda) NativeCore.Synchronize();
    }

    /// <summary>
    /// Orders ILGPU work before a native-core call. On CUDA both share one stream, so nothing
    /// is needed; on CPU the accelerator's queued kernels must finish before BLAS reads memory.
    /// </summary>
    internal void BeforeNativeCall()
    {
        if (!IsCuda) Accelerator.Synchronize();
    }

    public (ulong Free, ulong Total) MemoryInfo() => NativeCore.MemoryInfo();

    public void Dispose()
    {
        lock (s_lock)
        {
            if (s_open != this) return;
            Accelerator.Synchronize();
            Allocator.EmptyCache();
            _disposed = true;
            NativeCore.Shutdown();
            Accelerator.Dispose();
            Context.Dispose();
            s_open = null;
        }
    }
}
