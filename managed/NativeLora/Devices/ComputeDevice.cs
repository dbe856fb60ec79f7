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
    public string NativeBackend { get; }
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
        NativeBackend = NativeCore.BackendName;
        Kernels = new KernelSet(accelerator, gpuVariants: kind == DeviceKind.Cuda);
        Description = kind == DeviceKind.Cuda
            ? $"cuda: {accelerator.Name} ({accelerator.MemorySize / (1 << 20)} MiB), native core {NativeBackend}"
            : $"cpu: ILGPU CPU accelerator ({Environment.ProcessorCount} threads), native core {NativeBackend}";
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

    // Freed buffers wait here for a request of the same size: a training step allocates the same
    // shapes every time, and fresh allocations cost page faults on the CPU and cudaMalloc on a GPU.
    private readonly Dictionary<long, Stack<MemoryBuffer>> _pool = new();
    private long _pooledBytes;
    private readonly object _poolLock = new();

    /// <summary>Bytes of freed buffers kept for reuse at most.</summary>
    public long PoolLimitBytes { get; set; } = 2L << 30;

    public long PooledBytes { get { lock (_poolLock) return _pooledBytes; } }

    private long _liveBytes, _peakLiveBytes;

    /// <summary>Bytes held by live tensors (pooled buffers not counted), and the peak since <see cref="ResetPeak"/>.</summary>
    public long LiveBytes { get { lock (_poolLock) return _liveBytes; } }
    public long PeakLiveBytes { get { lock (_poolLock) return _peakLiveBytes; } }
    public void ResetPeak() { lock (_poolLock) _peakLiveBytes = _liveBytes; }

    private void Track(long bytes)
    {
        _liveBytes += bytes;
        if (_liveBytes > _peakLiveBytes) _peakLiveBytes = _liveBytes;
    }

    internal void Release(MemoryBuffer buffer)
    {
        lock (_poolLock)
        {
            Track(-buffer.LengthInBytes);
            if (_pooledBytes + buffer.LengthInBytes <= PoolLimitBytes && !_disposed)
            {
                if (!_pool.TryGetValue(buffer.LengthInBytes, out var stack)) _pool[buffer.LengthInBytes] = stack = new Stack<MemoryBuffer>();
                stack.Push(buffer);
                _pooledBytes += buffer.LengthInBytes;
                return;
            }
        }
        buffer.Dispose();
    }

    /// <summary>Frees every pooled buffer (e.g. before a large allocation or to report true usage).</summary>
    public void TrimPool()
    {
        lock (_poolLock)
        {
            foreach (var stack in _pool.Values)
                while (stack.Count > 0) stack.Pop().Dispose();
            _pool.Clear();
            _pooledBytes = 0;
        }
    }

    private bool _disposed;

    /// <summary>Allocates an uninitialised tensor in device memory (the one allocator for device tensors).</summary>
    public Tensor Allocate(DType dtype, params int[] shape)
    {
        var elements = Tensor.CountElements(shape);
        var bytes = Math.Max(1, elements * dtype.SizeOf());
        lock (_poolLock)
        {
            Track(bytes);
            if (_pool.TryGetValue(bytes, out var stack) && stack.Count > 0)
            {
                _pooledBytes -= bytes;
                return new Tensor(this, stack.Pop(), 0, dtype, shape, ownsBuffer: true);
            }
        }
        MemoryBuffer buffer;
        try
        {
            buffer = Accelerator.Allocate1D<byte>(bytes);
        }
        catch (Exception e) when (e is OutOfMemoryException or AcceleratorException)
        {
            TrimPool(); // pooled memory may be what is missing
            try
            {
                buffer = Accelerator.Allocate1D<byte>(bytes);
            }
            catch (Exception e2) when (e2 is OutOfMemoryException or AcceleratorException)
            {
                lock (_poolLock) Track(-bytes);
                throw new OutOfMemoryException(
                    $"cannot allocate a {dtype.Name()} tensor of shape [{string.Join(", ", shape)}] ({bytes:N0} bytes) on {Description}: {e2.Message}", e2);
            }
        }
        return new Tensor(this, buffer, 0, dtype, shape, ownsBuffer: true);
    }

    /// <summary>
    /// Allocates a zeroed tensor in the native core's paged memory (CUDA unified memory that
    /// can be evicted to the host; plain host memory on CPU). Used for optimizer states.
    /// </summary>
    public Tensor AllocatePaged(DType dtype, params int[] shape)
    {
        var bytes = Math.Max(1, Tensor.CountElements(shape) * dtype.SizeOf());
        var ptr = NativeCore.ManagedAlloc((ulong)bytes);
        var buffer = new ExternalMemoryBuffer(Accelerator, ptr, bytes);
        return new Tensor(this, buffer, 0, dtype, shape, ownsBuffer: true);
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
            TrimPool();
            _disposed = true;
            NativeCore.Shutdown();
            Accelerator.Dispose();
            Context.Dispose();
            s_open = null;
        }
    }
}
