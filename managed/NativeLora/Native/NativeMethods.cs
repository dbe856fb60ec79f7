using System.Runtime.InteropServices;

namespace NativeLora.Native;

/// <summary>Status codes of the native core; mirrors <c>nl_status</c> in native/include/nativelora.h.</summary>
public enum NlStatus
{
    Ok = 0,
    InvalidArgument = 1,
    OutOfMemory = 2,
    Backend = 3,
    Unsupported = 4,
    NotInitialized = 5,
    Internal = 6,
}

/// <summary>Mirrors <c>nl_dtype</c>.</summary>
public enum NlDType
{
    F32 = 0,
    F16 = 1,
    BF16 = 2,
}

/// <summary>Mirrors <c>nl_mem_advice</c>.</summary>
public enum NlMemAdvice
{
    PreferDevice = 0,
    PreferHost = 1,
    AccessedByDevice = 2,
}

/// <summary>Mirrors <c>nl_stats_source</c>: where the memory and utilisation figures came from.</summary>
public enum NlStatsSource
{
    Host = 0,
    Nvml = 1,
    CudaRuntime = 2,
}

/// <summary>Mirrors <c>nl_device_stats</c> field for field (sequential layout, the C struct's natural alignment).</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct NlDeviceStatsNative
{
    public int Source;
    public int UtilizationPercent;
    public long MemoryUsedBytes;
    public long MemoryTotalBytes;
    public double ProcessCpuSeconds;
    public long ProcessRssBytes;
    public fixed byte PciBusId[32];
}

/// <summary>
/// Source-generated P/Invoke bindings of native/include/nativelora.h, one per NL_API function,
/// in header order. BindingCoverageTests parses the header and fails if the two drift apart.
/// Strings come back as nint: a generated string return would free the core's static storage.
/// </summary>
internal static partial class NativeMethods
{
    internal const string Library = "nativelora";

    [LibraryImport(Library)] internal static partial int nl_abi_version();
    [LibraryImport(Library)] internal static partial nint nl_backend_name();
    [LibraryImport(Library)] internal static partial nint nl_last_error_message();

    [LibraryImport(Library)] internal static partial NlStatus nl_init(int deviceOrdinal, nint context, nint stream);
    [LibraryImport(Library)] internal static partial NlStatus nl_shutdown();
    [LibraryImport(Library)] internal static partial NlStatus nl_set_stream(nint stream);
    [LibraryImport(Library)] internal static partial NlStatus nl_synchronize();
    [LibraryImport(Library)] internal static partial NlStatus nl_device_memory_info(out nuint freeBytes, out nuint totalBytes);
    [LibraryImport(Library)] internal static partial NlStatus nl_query_device_stats(out NlDeviceStatsNative stats);

    [LibraryImport(Library)]
    internal static partial NlStatus nl_gemm(NlDType abDtype, NlDType cDtype, int transA, int transB, int m, int n, int k,
        float alpha, nint a, int lda, nint b, int ldb, float beta, nint c, int ldc);

    [LibraryImport(Library)]
    internal static partial NlStatus nl_gemm_strided_batched(NlDType abDtype, NlDType cDtype, int transA, int transB, int m, int n, int k,
        float alpha, nint a, int lda, long strideA, nint b, int ldb, long strideB,
        float beta, nint c, int ldc, long strideC, int batch);

    [LibraryImport(Library)] internal static partial NlStatus nl_managed_alloc(nuint bytes, out nint ptr);
    [LibraryImport(Library)] internal static partial NlStatus nl_managed_free(nint ptr);
    [LibraryImport(Library)] internal static partial NlStatus nl_managed_advise(nint ptr, nuint bytes, NlMemAdvice advice);
    [LibraryImport(Library)] internal static partial NlStatus nl_managed_prefetch(nint ptr, nuint bytes, int toDevice);

    [LibraryImport(Library)] internal static partial NlStatus nl_stream_create(out nint stream);
    [LibraryImport(Library)] internal static partial NlStatus nl_stream_destroy(nint stream);
    [LibraryImport(Library)] internal static partial NlStatus nl_stream_synchronize(nint stream);
    [LibraryImport(Library)] internal static partial NlStatus nl_event_create(out nint evt);
    [LibraryImport(Library)] internal static partial NlStatus nl_event_destroy(nint evt);
    [LibraryImport(Library)] internal static partial NlStatus nl_event_record(nint evt, nint stream);
    [LibraryImport(Library)] internal static partial NlStatus nl_event_synchronize(nint evt);
    [LibraryImport(Library)] internal static partial NlStatus nl_event_elapsed_ms(nint start, nint end, out float ms);
}
