// backend_cpu.cpp — the C ABI over OpenBLAS and host memory (no GPU).
// bf16/fp16 GEMMs convert their operands to fp32 around cblas_sgemm, so they
// accumulate in fp32 exactly like the CUDA backend's cublasGemmEx calls.
#include <cblas.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "errors.h"
#include "half.h"
#include "process_stats.h"

#if defined(_WIN32)
#define NOMINMAX
#include <windows.h>
#include <malloc.h>
#endif

using nl::fail;
using nl::guarded;
using nl::require;

namespace {

bool g_initialized = false;

struct HostEvent {
    std::chrono::steady_clock::time_point when{};
    bool recorded = false;
};

// Converts a strided row-major matrix (rows×cols, leading dim ld) to dense fp32.
void to_f32(nl_dtype dtype, const void* src, int rows, int cols, int ld, std::vector<float>& dst) {
    dst.resize(static_cast<size_t>(rows) * cols);
    const auto* h = static_cast<const uint16_t*>(src);
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) {
            const uint16_t v = h[static_cast<size_t>(r) * ld + c];
            dst[static_cast<size_t>(r) * cols + c] = dtype == NL_DTYPE_BF16 ? nl::bf16_to_f32(v) : nl::f16_to_f32(v);
        }
}

void from_f32(nl_dtype dtype, const std::vector<float>& src, int rows, int cols, void* dst, int ld) {
    auto* h = static_cast<uint16_t*>(dst);
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) {
            const float v = src[static_cast<size_t>(r) * cols + c];
            h[static_cast<size_t>(r) * ld + c] = dtype == NL_DTYPE_BF16 ? nl::f32_to_bf16(v) : nl::f32_to_f16(v);
        }
}

void gemm_one(nl_dtype dtype, nl_dtype c_dtype, int ta, int tb, int m, int n, int k, float alpha, const void* a,
              int lda, const void* b, int ldb, float beta, void* c, int ldc) {
    if (m == 0 || n == 0) return;
    const CBLAS_TRANSPOSE opa = ta ? CblasTrans : CblasNoTrans;
    const CBLAS_TRANSPOSE opb = tb ? CblasTrans : CblasNoTrans;
    if (dtype == NL_DTYPE_F32) {
        if (k == 0) {  // BLAS may skip the beta scaling when k == 0; do it ourselves
            auto* cf = static_cast<float*>(c);
            for (int r = 0; r < m; ++r)
                for (int j = 0; j < n; ++j) {
                    float& x = cf[static_cast<size_t>(r) * ldc + j];
                    x = beta == 0.0f ? 0.0f : beta * x;
                }
            return;
        }
        cblas_sgemm(CblasRowMajor, opa, opb, m, n, k, alpha, static_cast<const float*>(a), lda,
                    static_cast<const float*>(b), ldb, beta, static_cast<float*>(c), ldc);
        return;
    }
    std::vector<float> fa, fb, fc;
    const int a_rows = ta ? k : m, a_cols = ta ? m : k;
    const int b_rows = tb ? n : k, b_cols = tb ? k : n;
    if (k > 0) {
        to_f32(dtype, a, a_rows, a_cols, lda, fa);
        to_f32(dtype, b, b_rows, b_cols, ldb, fb);
    }
    if (c_dtype == NL_DTYPE_F32) {  // f32 result: BLAS writes C in place
        auto* cf = static_cast<float*>(c);
        if (k > 0)
            cblas_sgemm(CblasRowMajor, opa, opb, m, n, k, alpha, fa.data(), a_cols > 0 ? a_cols : 1, fb.data(),
                        b_cols > 0 ? b_cols : 1, beta, cf, ldc);
        else
            for (int r = 0; r < m; ++r)
                for (int j = 0; j < n; ++j) {
                    float& x = cf[static_cast<size_t>(r) * ldc + j];
                    x = beta == 0.0f ? 0.0f : beta * x;
                }
        return;
    }
    if (beta != 0.0f) to_f32(dtype, c, m, n, ldc, fc);
    else fc.assign(static_cast<size_t>(m) * n, 0.0f);
    if (k > 0)
        cblas_sgemm(CblasRowMajor, opa, opb, m, n, k, alpha, fa.data(), a_cols > 0 ? a_cols : 1, fb.data(),
                    b_cols > 0 ? b_cols : 1, beta, fc.data(), n);
    else if (beta != 0.0f)
        for (float& x : fc) x *= beta;
    from_f32(dtype, fc, m, n, c, ldc);
}

// Host memory is the device memory here: total and available (what can be allocated without swapping).
void host_memory(size_t* free_bytes, size_t* total_bytes) {
#if defined(_WIN32)
    MEMORYSTATUSEX status{};
    status.dwLength = sizeof(status);
    if (!GlobalMemoryStatusEx(&status)) fail(NL_ERR_BACKEND, "GlobalMemoryStatusEx failed");
    *total_bytes = static_cast<size_t>(status.ullTotalPhys);
    *free_bytes = static_cast<size_t>(status.ullAvailPhys);
#else
    std::ifstream meminfo("/proc/meminfo");
    if (!meminfo) fail(NL_ERR_BACKEND, "cannot read /proc/meminfo");
    size_t total_kb = 0, avail_kb = 0;
    std::string key;
    size_t value;
    std::string unit;
    while (meminfo >> key >> value >> unit) {
        if (key == "MemTotal:") total_kb = value;
        else if (key == "MemAvailable:") avail_kb = value;
    }
    if (total_kb == 0) fail(NL_ERR_BACKEND, "MemTotal not found in /proc/meminfo");
    *total_bytes = total_kb * 1024;
    *free_bytes = avail_kb * 1024;
#endif
}

size_t elem_size(nl_dtype dtype) { return dtype == NL_DTYPE_F32 ? 4 : 2; }

}  // namespace

extern "C" {

NL_API const char* nl_backend_name(void) { return "cpu-openblas"; }

NL_API nl_status nl_init(int device_ordinal, void* /*context*/, void* /*stream*/) {
    return guarded("nl_init", [&] {
        require(device_ordinal == 0, "the CPU backend has only device 0, got " + std::to_string(device_ordinal));
        g_initialized = true;
    });
}

NL_API nl_status nl_shutdown(void) {
    return guarded("nl_shutdown", [&] { g_initialized = false; });
}

NL_API nl_status nl_set_stream(void* /*stream*/) {
    return guarded("nl_set_stream", [&] {});
}

NL_API nl_status nl_synchronize(void) {
    return guarded("nl_synchronize", [&] {});
}

NL_API nl_status nl_device_memory_info(size_t* free_bytes, size_t* total_bytes) {
    return guarded("nl_device_memory_info", [&] {
        require(free_bytes != nullptr && total_bytes != nullptr, "output pointers must not be NULL");
        host_memory(free_bytes, total_bytes);
    });
}

NL_API nl_status nl_query_device_stats(nl_device_stats* out) {
    return guarded("nl_query_device_stats", [&] {
        require(out != nullptr, "output pointer must not be NULL");
        *out = nl_device_stats{};
        out->source = NL_STATS_HOST;
        out->utilization_percent = -1;  // no device to be busy: the process's CPU time says how busy the host is
        size_t free_bytes = 0, total_bytes = 0;
        host_memory(&free_bytes, &total_bytes);
        out->memory_total_bytes = static_cast<int64_t>(total_bytes);
        out->memory_used_bytes = static_cast<int64_t>(total_bytes - free_bytes);
        nl::process_stats(&out->process_cpu_seconds, &out->process_rss_bytes);
    });
}

NL_API nl_status nl_gemm(nl_dtype ab_dtype, nl_dtype c_dtype, int trans_a, int trans_b, int m, int n, int k,
                         float alpha, const void* a, int lda, const void* b, int ldb, float beta, void* c, int ldc) {
    return guarded("nl_gemm", [&] {
        if (!g_initialized) fail(NL_ERR_NOT_INITIALIZED, "call nl_init first");
        nl::check_gemm_args(ab_dtype, c_dtype, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc);
        gemm_one(ab_dtype, c_dtype, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    });
}

NL_API nl_status nl_gemm_strided_batched(nl_dtype ab_dtype, nl_dtype c_dtype, int trans_a, int trans_b, int m, int n, int k,
                                         float alpha, const void* a, int lda, int64_t stride_a,
                                         const void* b, int ldb, int64_t stride_b, float beta, void* c,
                                         int ldc, int64_t stride_c, int batch) {
    return guarded("nl_gemm_strided_batched", [&] {
        if (!g_initialized) fail(NL_ERR_NOT_INITIALIZED, "call nl_init first");
        nl::check_gemm_args(ab_dtype, c_dtype, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc);
        require(batch >= 0, "batch must be >= 0, got " + std::to_string(batch));
        require(stride_a >= 0 && stride_b >= 0 && stride_c >= 0, "strides must be >= 0");
        const size_t es = elem_size(ab_dtype), ces = elem_size(c_dtype);
        for (int i = 0; i < batch; ++i)
            gemm_one(ab_dtype, c_dtype, trans_a, trans_b, m, n, k, alpha,
                     static_cast<const char*>(a) + static_cast<size_t>(i) * stride_a * es, lda,
                     static_cast<const char*>(b) + static_cast<size_t>(i) * stride_b * es, ldb, beta,
                     static_cast<char*>(c) + static_cast<size_t>(i) * stride_c * ces, ldc);
    });
}

NL_API nl_status nl_managed_alloc(size_t bytes, void** out_ptr) {
    return guarded("nl_managed_alloc", [&] {
        require(out_ptr != nullptr, "out_ptr is NULL");
        *out_ptr = nullptr;
        require(bytes > 0, "bytes must be > 0");
        const size_t rounded = (bytes + 63) / 64 * 64;
#if defined(_WIN32)
        void* p = _aligned_malloc(rounded, 64);
#else
        void* p = std::aligned_alloc(64, rounded);
#endif
        if (p == nullptr)
            fail(NL_ERR_OUT_OF_MEMORY, "cannot allocate " + std::to_string(bytes) + " bytes of host memory");
        std::memset(p, 0, rounded);
        *out_ptr = p;
    });
}

NL_API nl_status nl_managed_free(void* ptr) {
#if defined(_WIN32)
    return guarded("nl_managed_free", [&] { _aligned_free(ptr); });
#else
    return guarded("nl_managed_free", [&] { std::free(ptr); });
#endif
}

NL_API nl_status nl_managed_advise(void* ptr, size_t /*bytes*/, nl_mem_advice advice) {
    return guarded("nl_managed_advise", [&] {
        require(ptr != nullptr, "ptr is NULL");
        require(advice >= NL_ADVISE_PREFER_DEVICE && advice <= NL_ADVISE_ACCESSED_BY_DEVICE, "unknown advice");
    });
}

NL_API nl_status nl_managed_prefetch(void* ptr, size_t /*bytes*/, int /*to_device*/) {
    return guarded("nl_managed_prefetch", [&] { require(ptr != nullptr, "ptr is NULL"); });
}

NL_API nl_status nl_stream_create(void** out_stream) {
    return guarded("nl_stream_create", [&] {
        require(out_stream != nullptr, "out_stream is NULL");
        *out_stream = new char(0);  // an opaque non-NULL token; CPU work is synchronous
    });
}

NL_API nl_status nl_stream_destroy(void* stream) {
    return guarded("nl_stream_destroy", [&] { delete static_cast<char*>(stream); });
}

NL_API nl_status nl_stream_synchronize(void* /*stream*/) {
    return guarded("nl_stream_synchronize", [&] {});
}

NL_API nl_status nl_event_create(void** out_event) {
    return guarded("nl_event_create", [&] {
        require(out_event != nullptr, "out_event is NULL");
        *out_event = new HostEvent();
    });
}

NL_API nl_status nl_event_destroy(void* event) {
    return guarded("nl_event_destroy", [&] { delete static_cast<HostEvent*>(event); });
}

NL_API nl_status nl_event_record(void* event, void* /*stream*/) {
    return guarded("nl_event_record", [&] {
        require(event != nullptr, "event is NULL");
        auto* e = static_cast<HostEvent*>(event);
        e->when = std::chrono::steady_clock::now();
        e->recorded = true;
    });
}

NL_API nl_status nl_event_synchronize(void* event) {
    return guarded("nl_event_synchronize", [&] { require(event != nullptr, "event is NULL"); });
}

NL_API nl_status nl_event_elapsed_ms(void* start, void* end, float* out_ms) {
    return guarded("nl_event_elapsed_ms", [&] {
        require(start != nullptr && end != nullptr && out_ms != nullptr, "NULL argument");
        auto* s = static_cast<HostEvent*>(start);
        auto* e = static_cast<HostEvent*>(end);
        require(s->recorded && e->recorded, "both events must be recorded first");
        *out_ms = std::chrono::duration<float, std::milli>(e->when - s->when).count();
    });
}

}  // extern "C"
