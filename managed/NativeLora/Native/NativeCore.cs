using System.Runtime.InteropServices;

namespace NativeLora.Native;

/// <summary>An error reported by the native core, naming the call that failed.</summary>
public sealed class NativeCoreException : Exception
{
    public NlStatus Status { get; }
    public string Function { get; }

    public NativeCoreException(string function, NlStatus status, string detail)
        : base($"{function} failed ({status}): {detail}")
    {
        Function = function;
        Status = status;
    }
}

/// <summary>What <see cref="NativeCore.QueryDeviceStats"/> reports; null where the backend cannot measure it.</summary>
public sealed record DeviceStats(NlStatsSource Source, double? Utilization, long? MemoryUsedBytes, long? MemoryTotalBytes,
    double? ProcessCpuSeconds, long? ProcessRssBytes, string PciBusId);

/// <summary>
/// Thin checked wrappers over the C ABI: every call's status becomes an exception whose
/// message names the call and carries nl_last_error_message(). Everything managed goes
/// through here, never through NativeMethods directly.
/// </summary>
public static class NativeCore
{
    public const int ExpectedAbiVersion = 3;

    /// <summary>"cuda" or "cpu-openblas": which backend CMake built.</summary>
    public static string BackendName => Marshal.PtrToStringUTF8(NativeMethods.nl_backend_name()) ?? "";

    public static bool IsCuda => BackendName == "cuda";

    public static int AbiVersion => NativeMethods.nl_abi_version();

    internal static void Check(NlStatus status, string function)
    {
        if (status == NlStatus.Ok) return;
        var detail = Marshal.PtrToStringUTF8(NativeMethods.nl_last_error_message()) ?? "";
        throw new NativeCoreException(function, status, detail);
    }

    public static void Init(int deviceOrdinal, nint context, nint stream)
    {
        if (AbiVersion != ExpectedAbiVersion)
            throw new InvalidOperationException(
                $"native core ABI version {AbiVersion} does not match the managed bindings ({ExpectedAbiVersion}); rebuild with ./build.sh");
        Check(NativeMethods.nl_init(deviceOrdinal, context, stream), "nl_init");
    }

    public static void Shutdown() => Check(NativeMethods.nl_shutdown(), "nl_shutdown");
    public static void Synchronize() => Check(NativeMethods.nl_synchronize(), "nl_synchronize");

    public static (ulong Free, ulong Total) MemoryInfo()
    {
        Check(NativeMethods.nl_device_memory_info(out var free, out var total), "nl_device_memory_info");
        return (free, total);
    }

    /// <summary>
    /// Device and process figures for monitoring (nl_query_device_stats): on CUDA memory and utilisation from NVML
    /// (loaded at run time, matched by PCI bus id) or cudaMemGetInfo without it; on the CPU host memory. Unknown: null.
    /// </summary>
    public static unsafe DeviceStats QueryDeviceStats()
    {
        Check(NativeMethods.nl_query_device_stats(out var s), "nl_query_device_stats");
        static long? Known(long v) => v < 0 ? null : v;
        return new DeviceStats((NlStatsSource)s.Source, s.UtilizationPercent < 0 ? null : s.UtilizationPercent / 100.0,
            Known(s.MemoryUsedBytes), Known(s.MemoryTotalBytes), s.ProcessCpuSeconds < 0 ? null : s.ProcessCpuSeconds,
            Known(s.ProcessRssBytes), Marshal.PtrToStringUTF8((nint)s.PciBusId) ?? "");
    }

    private static long s_gemmCalls;

    /// <summary>GEMM calls into the core so far (each is one cuBLAS launch on CUDA): the benchmarks count launches per step.</summary>
    public static long GemmCalls => Interlocked.Read(ref s_gemmCalls);

    public static void Gemm(NlDType dtype, NlDType cDtype, bool transA, bool transB, int m, int n, int k, float alpha,
        nint a, int lda, nint b, int ldb, float beta, nint c, int ldc)
    {
        Interlocked.Increment(ref s_gemmCalls);
        Check(NativeMethods.nl_gemm(dtype, cDtype, transA ? 1 : 0, transB ? 1 : 0, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc),
            "nl_gemm");
    }

    public static void GemmStridedBatched(NlDType dtype, NlDType cDtype, bool transA, bool transB, int m, int n, int k, float alpha,
        nint a, int lda, long strideA, nint b, int ldb, long strideB, float beta, nint c, int ldc, long strideC, int batch)
    {
        Interlocked.Increment(ref s_gemmCalls);
        Check(NativeMethods.nl_gemm_strided_batched(dtype, cDtype, transA ? 1 : 0, transB ? 1 : 0, m, n, k, alpha,
            a, lda, strideA, b, ldb, strideB, beta, c, ldc, strideC, batch), "nl_gemm_strided_batched");
    }

    public static nint ManagedAlloc(ulong bytes)
    {
        Check(NativeMethods.nl_managed_alloc((nuint)bytes, out var ptr), "nl_managed_alloc");
        return ptr;
    }

    public static void ManagedFree(nint ptr) => Check(NativeMethods.nl_managed_free(ptr), "nl_managed_free");

    /// <summary>Zeroed host memory that kernels read in place (pinned and mapped on CUDA).</summary>
    public static nint HostAlloc(ulong bytes)
    {
        Check(NativeMethods.nl_host_alloc((nuint)bytes, out var ptr), "nl_host_alloc");
        return ptr;
    }

    public static void HostFree(nint ptr) => Check(NativeMethods.nl_host_free(ptr), "nl_host_free");

    public static void ManagedAdvise(nint ptr, ulong bytes, NlMemAdvice advice) =>
        Check(NativeMethods.nl_managed_advise(ptr, (nuint)bytes, advice), "nl_managed_advise");

    public static void ManagedPrefetch(nint ptr, ulong bytes, bool toDevice) =>
        Check(NativeMethods.nl_managed_prefetch(ptr, (nuint)bytes, toDevice ? 1 : 0), "nl_managed_prefetch");

    public static nint StreamCreate()
    {
        Check(NativeMethods.nl_stream_create(out var s), "nl_stream_create");
        return s;
    }

    public static void StreamDestroy(nint stream) => Check(NativeMethods.nl_stream_destroy(stream), "nl_stream_destroy");
    public static void StreamSynchronize(nint stream) => Check(NativeMethods.nl_stream_synchronize(stream), "nl_stream_synchronize");

    public static nint EventCreate()
    {
        Check(NativeMethods.nl_event_create(out var e), "nl_event_create");
        return e;
    }

    public static void EventDestroy(nint evt) => Check(NativeMethods.nl_event_destroy(evt), "nl_event_destroy");
    public static void EventRecord(nint evt, nint stream) => Check(NativeMethods.nl_event_record(evt, stream), "nl_event_record");
    public static void EventSynchronize(nint evt) => Check(NativeMethods.nl_event_synchronize(evt), "nl_event_synchronize");

    public static float EventElapsedMs(nint start, nint end)
    {
        Check(NativeMethods.nl_event_elapsed_ms(start, end, out var ms), "nl_event_elapsed_ms");
        return ms;
    }
}
