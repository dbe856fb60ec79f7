/*
 * nativelora.h — the C ABI of NativeLora's native core. Single source of truth:
 * the managed bindings (managed/NativeLora/Native/NativeMethods.cs) mirror this
 * file, and a test parses it to check that every NL_API function is bound.
 *
 * Two backends implement it, chosen by CMake: CUDA (cuBLAS/cuBLASLt, unified
 * memory) and CPU (OpenBLAS, host memory). Same names, same semantics, same
 * status codes. Every function returns nl_status; on failure the text is in
 * nl_last_error_message() (per thread, valid until the next failing call).
 *
 * GEMM convention: all matrices are ROW-MAJOR. With op(X) = X or Xᵀ,
 *   C[m,n] = alpha * op(A)[m,k] · op(B)[k,n] + beta * C[m,n]
 * lda/ldb/ldc are row strides in elements of the stored (untransposed) matrix.
 * Accumulation is always fp32. A and B share ab_dtype; C is c_dtype, which is either
 * ab_dtype or F32 (bf16/f16 inputs with an f32 result, e.g. logits for the loss).
 */
#ifndef NATIVELORA_H
#define NATIVELORA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define NL_API __declspec(dllexport)
#else
#define NL_API __attribute__((visibility("default")))
#endif

#define NL_ABI_VERSION 3

typedef enum nl_status {
    NL_OK = 0,
    NL_ERR_INVALID_ARGUMENT = 1,
    NL_ERR_OUT_OF_MEMORY = 2,
    NL_ERR_BACKEND = 3,      /* cuBLAS / CUDA runtime / BLAS reported an error */
    NL_ERR_UNSUPPORTED = 4,  /* operation not available in this backend */
    NL_ERR_NOT_INITIALIZED = 5,
    NL_ERR_INTERNAL = 6
} nl_status;

typedef enum nl_dtype {
    NL_DTYPE_F32 = 0,
    NL_DTYPE_F16 = 1,
    NL_DTYPE_BF16 = 2
} nl_dtype;

typedef enum nl_mem_advice {
    NL_ADVISE_PREFER_DEVICE = 0, /* preferred location: the GPU */
    NL_ADVISE_PREFER_HOST = 1,   /* preferred location: host memory (evictable) */
    NL_ADVISE_ACCESSED_BY_DEVICE = 2
} nl_mem_advice;

/* --- identity and errors --------------------------------------------------- */
NL_API int nl_abi_version(void);
/* "cuda" or "cpu-openblas". Static string; never freed by the caller. */
NL_API const char* nl_backend_name(void);
/* Last error text on this thread ("" if none). Static per-thread storage. */
NL_API const char* nl_last_error_message(void);

/* --- lifetime ---------------------------------------------------------------
 * nl_init binds the core to a device. On CUDA, `context` is an existing
 * CUcontext (e.g. ILGPU's) that is made current and adopted by the runtime, and
 * `stream` a cudaStream_t (e.g. ILGPU's) that cuBLAS is set to; both may be NULL
 * to use the device's primary context and the default stream. The CPU backend
 * ignores both. Calling nl_init again rebinds. */
NL_API nl_status nl_init(int device_ordinal, void* context, void* stream);
NL_API nl_status nl_shutdown(void);
/* Set the stream used by subsequent GEMMs (NULL = default stream). */
NL_API nl_status nl_set_stream(void* stream);
/* Wait until all work queued by the core has finished. */
NL_API nl_status nl_synchronize(void);
NL_API nl_status nl_device_memory_info(size_t* free_bytes, size_t* total_bytes);

/* --- monitoring -----------------------------------------------------------------
 * What a metrics endpoint reports about the device and the process. A field the
 * backend cannot measure is -1 (never a guess).
 * CUDA: memory used/total and utilisation (percent of the last sample period in
 * which a kernel ran) from NVML, which the core loads at run time from
 * libnvidia-ml.so.1 (nvml.dll on Windows) — there is no build-time dependency —
 * for the device nl_init bound, matched by PCI bus id (cudaDeviceGetPCIBusId).
 * Without NVML: memory from cudaMemGetInfo, utilisation -1, source CUDA_RUNTIME.
 * CPU: host memory (MemTotal − MemAvailable of /proc/meminfo) as device memory,
 * utilisation -1. Both: the process's CPU time (user + system) and resident set. */
typedef enum nl_stats_source {
    NL_STATS_HOST = 0,         /* CPU backend: host memory */
    NL_STATS_NVML = 1,         /* CUDA: NVML, matched by PCI bus id */
    NL_STATS_CUDA_RUNTIME = 2  /* CUDA without NVML: cudaMemGetInfo only */
} nl_stats_source;

typedef struct nl_device_stats {
    int32_t source;              /* nl_stats_source */
    int32_t utilization_percent; /* 0..100, or -1 */
    int64_t memory_used_bytes;   /* or -1 */
    int64_t memory_total_bytes;  /* or -1 */
    double process_cpu_seconds;  /* user + system, or -1 */
    int64_t process_rss_bytes;   /* resident set size, or -1 */
    char pci_bus_id[32];         /* CUDA: "0000:3B:00.0"; CPU: "" */
} nl_device_stats;

NL_API nl_status nl_query_device_stats(nl_device_stats* out);

/* --- GEMM -------------------------------------------------------------------- */
NL_API nl_status nl_gemm(nl_dtype ab_dtype, nl_dtype c_dtype, int trans_a, int trans_b,
                         int m, int n, int k,
                         float alpha, const void* a, int lda,
                         const void* b, int ldb,
                         float beta, void* c, int ldc);

/* batch independent GEMMs; matrix i of A starts at a + i*stride_a elements. */
NL_API nl_status nl_gemm_strided_batched(nl_dtype ab_dtype, nl_dtype c_dtype, int trans_a, int trans_b,
                                         int m, int n, int k,
                                         float alpha, const void* a, int lda, int64_t stride_a,
                                         const void* b, int ldb, int64_t stride_b,
                                         float beta, void* c, int ldc, int64_t stride_c,
                                         int batch);

/* --- paged (unified) memory ---------------------------------------------------
 * CUDA: cudaMallocManaged; advise/prefetch move pages between host and GPU.
 * CPU: 64-byte aligned host memory; advise/prefetch succeed and do nothing. */
NL_API nl_status nl_managed_alloc(size_t bytes, void** out_ptr);
NL_API nl_status nl_managed_free(void* ptr);
NL_API nl_status nl_managed_advise(void* ptr, size_t bytes, nl_mem_advice advice);
/* to_device != 0: prefetch to the GPU; 0: to host memory. Queued on the stream. */
NL_API nl_status nl_managed_prefetch(void* ptr, size_t bytes, int to_device);

/* --- streams and events (CPU: work is synchronous; events record host time) --- */
NL_API nl_status nl_stream_create(void** out_stream);
NL_API nl_status nl_stream_destroy(void* stream);
NL_API nl_status nl_stream_synchronize(void* stream);
NL_API nl_status nl_event_create(void** out_event);
NL_API nl_status nl_event_destroy(void* event);
NL_API nl_status nl_event_record(void* event, void* stream);
NL_API nl_status nl_event_synchronize(void* event);
NL_API nl_status nl_event_elapsed_ms(void* start, void* end, float* out_ms);

#ifdef __cplusplus
}
#endif

#endif /* NATIVELORA_H */
