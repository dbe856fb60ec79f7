// backend_cuda.cpp — the C ABI over the CUDA runtime, cuBLAS and unified memory.
// Built only when CMake finds the CUDA toolkit (see the root CMakeLists.txt).
//
// Sharing with ILGPU: nl_init receives ILGPU's CUcontext and stream. The context is
// made current with the driver API; the runtime then uses it instead of the
// primary context (runtime/driver interoperability rules), so cudaMalloc'd and
// ILGPU-allocated pointers live in one address space and cuBLAS runs on ILGPU's
// stream, ordered with its kernels without extra synchronisation.
#include <cublas_v2.h>
#include <cuda.h>
#include <cuda_runtime.h>

#include <cstring>
#include <mutex>
#include <string>

#include "errors.h"
#include "process_stats.h"

#if defined(_WIN32)
#include <windows.h>
#else
#include <dlfcn.h>
#endif

using nl::fail;
using nl::guarded;
using nl::require;

namespace {

cublasHandle_t g_handle = nullptr;
CUcontext g_context = nullptr;
cudaStream_t g_stream = nullptr;
int g_device = 0;

void check_cuda(cudaError_t e, const char* what) {
    if (e == cudaSuccess) return;
    const nl_status s = (e == cudaErrorMemoryAllocation) ? NL_ERR_OUT_OF_MEMORY : NL_ERR_BACKEND;
    fail(s, std::string(what) + " failed: " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

void check_cu(CUresult r, const char* what) {
    if (r == CUDA_SUCCESS) return;
    const char* name = nullptr;
    cuGetErrorName(r, &name);
    fail(NL_ERR_BACKEND, std::string(what) + " failed: " + (name ? name : "unknown CUresult"));
}

void check_cublas(cublasStatus_t s, const char* what) {
    if (s == CUBLAS_STATUS_SUCCESS) return;
    const nl_status st = (s == CUBLAS_STATUS_ALLOC_FAILED) ? NL_ERR_OUT_OF_MEMORY
                         : (s == CUBLAS_STATUS_NOT_SUPPORTED || s == CUBLAS_STATUS_ARCH_MISMATCH) ? NL_ERR_UNSUPPORTED
                                                                                                   : NL_ERR_BACKEND;
    fail(st, std::string(what) + " failed: " + cublasGetStatusName(s) + " (" + cublasGetStatusString(s) + ")");
}

// The calling thread may not have the adopted context current (ILGPU binds per thread).
void make_current() {
    if (g_handle == nullptr) fail(NL_ERR_NOT_INITIALIZED, "call nl_init first");
    if (g_context != nullptr) {
        CUcontext cur = nullptr;
        check_cu(cuCtxGetCurrent(&cur), "cuCtxGetCurrent");
        if (cur != g_context) check_cu(cuCtxSetCurrent(g_context), "cuCtxSetCurrent");
    } else {
        check_cuda(cudaSetDevice(g_device), "cudaSetDevice");
    }
}

cudaDataType_t data_type(nl_dtype d) {
    switch (d) {
        case NL_DTYPE_F32: return CUDA_R_32F;
        case NL_DTYPE_F16: return CUDA_R_16F;
        case NL_DTYPE_BF16: return CUDA_R_16BF;
    }
    fail(NL_ERR_INVALID_ARGUMENT, "unknown dtype");
}

// Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: swap the operands
// and m/n, keep the transposition flags.
void gemm_batched(nl_dtype dtype, nl_dtype c_dtype, int ta, int tb, int m, int n, int k, float alpha, const void* a, int lda,
                  long long sa, const void* b, int ldb, long long sb, float beta, void* c, int ldc, long long sc,
                  int batch) {
    if (m == 0 || n == 0 || batch == 0) return;
    const cudaDataType_t t = data_type(dtype);
    const cudaDataType_t tc = data_type(c_dtype);
    const cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    // fp32 inputs may use TF32 tensor cores only if the caller opts in; keep exact fp32 by default.
    const cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
    const int lda_ = lda < 1 ? 1 : lda, ldb_ = ldb < 1 ? 1 : ldb;
    if (batch == 1)
        check_cublas(cublasGemmEx(g_handle, opb, opa, n, m, k, &alpha, b, t, ldb_, a, t, lda_, &beta, c, tc, ldc,
                                  compute, CUBLAS_GEMM_DEFAULT),
                     "cublasGemmEx");
    else
        check_cublas(cublasGemmStridedBatchedEx(g_handle, opb, opa, n, m, k, &alpha, b, t, ldb_, sb, a, t, lda_, sa,
                                                &beta, c, tc, ldc, sc, batch, compute, CUBLAS_GEMM_DEFAULT),
                     "cublasGemmStridedBatchedEx");
}

// NVML, loaded at run time (no build-time dependency: the toolkit's nvml.h and
// libnvidia-ml stubs are not needed). The few declarations we use, from NVML's
// public API: nvmlReturn_t is an int (0 = success), handles are opaque pointers.
namespace nvml {
struct Memory { unsigned long long total, free, used; };
struct Utilization { unsigned int gpu, memory; };
using Device = void*;
using InitFn = int (*)();
using HandleByBusIdFn = int (*)(const char*, Device*);
using MemoryFn = int (*)(Device, Memory*);
using UtilizationFn = int (*)(Device, Utilization*);

struct Api {
    bool tried = false, ok = false;
    InitFn init = nullptr;
    HandleByBusIdFn handle_by_bus_id = nullptr;
    MemoryFn memory = nullptr;
    UtilizationFn utilization = nullptr;
    Device device = nullptr;
    int device_ordinal = -1;
};
Api g_api;
std::mutex g_mutex;

void* symbol(void* lib, const char* name) {
#if defined(_WIN32)
    return reinterpret_cast<void*>(GetProcAddress(static_cast<HMODULE>(lib), name));
#else
    return dlsym(lib, name);
#endif
}

// Loads the library once per process; binds the device of `ordinal` by its PCI bus id. False: no NVML.
bool bind(int ordinal, const char* bus_id) {
    if (!g_api.tried) {
        g_api.tried = true;
#if defined(_WIN32)
        void* lib = LoadLibraryA("nvml.dll");
#else
        void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
#endif
        if (lib == nullptr) return false;
        g_api.init = reinterpret_cast<InitFn>(symbol(lib, "nvmlInit_v2"));
        g_api.handle_by_bus_id = reinterpret_cast<HandleByBusIdFn>(symbol(lib, "nvmlDeviceGetHandleByPciBusId_v2"));
        g_api.memory = reinterpret_cast<MemoryFn>(symbol(lib, "nvmlDeviceGetMemoryInfo"));
        g_api.utilization = reinterpret_cast<UtilizationFn>(symbol(lib, "nvmlDeviceGetUtilizationRates"));
        g_api.ok = g_api.init && g_api.handle_by_bus_id && g_api.memory && g_api.utilization && g_api.init() == 0;
    }
    if (!g_api.ok) return false;
    if (g_api.device_ordinal != ordinal) {
        g_api.device = nullptr;
        if (g_api.handle_by_bus_id(bus_id, &g_api.device) != 0) return false;
        g_api.device_ordinal = ordinal;
    }
    return true;
}
}  // namespace nvml

// CUDA 13 replaced the device ordinal of cudaMemAdvise / cudaMemPrefetchAsync with a cudaMemLocation
// (and gave the prefetch a flags argument); CUDA 12 still takes the ordinal (cudaCpuDeviceId = host).
#if CUDART_VERSION >= 13000
cudaMemLocation location(bool device) {
    cudaMemLocation loc{};
    loc.type = device ? cudaMemLocationTypeDevice : cudaMemLocationTypeHost;
    loc.id = device ? g_device : 0;
    return loc;
}
void mem_advise(void* ptr, size_t bytes, cudaMemoryAdvise advice, bool device) {
    check_cuda(cudaMemAdvise(ptr, bytes, advice, location(device)), "cudaMemAdvise");
}
void mem_prefetch(void* ptr, size_t bytes, bool device) {
    check_cuda(cudaMemPrefetchAsync(ptr, bytes, location(device), 0, g_stream), "cudaMemPrefetchAsync");
}
#else
void mem_advise(void* ptr, size_t bytes, cudaMemoryAdvise advice, bool device) {
    check_cuda(cudaMemAdvise(ptr, bytes, advice, device ? g_device : cudaCpuDeviceId), "cudaMemAdvise");
}
void mem_prefetch(void* ptr, size_t bytes, bool device) {
    check_cuda(cudaMemPrefetchAsync(ptr, bytes, device ? g_device : cudaCpuDeviceId, g_stream), "cudaMemPrefetchAsync");
}
#endif

}  // namespace

extern "C" {

NL_API const char* nl_backend_name(void) { return "cuda"; }

NL_API nl_status nl_init(int device_ordinal, void* context, void* stream) {
    return guarded("nl_init", [&] {
        int count = 0;
        check_cuda(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
        require(device_ordinal >= 0 && device_ordinal < count,
                "device " + std::to_string(device_ordinal) + " does not exist (" + std::to_string(count) + " found)");
        if (g_handle != nullptr) {
            cublasDestroy(g_handle);
            g_handle = nullptr;
        }
        g_device = device_ordinal;
        g_context = static_cast<CUcontext>(context);
        if (g_context != nullptr) {
            check_cu(cuInit(0), "cuInit");
            check_cu(cuCtxSetCurrent(g_context), "cuCtxSetCurrent");
        } else {
            check_cuda(cudaSetDevice(device_ordinal), "cudaSetDevice");
        }
        check_cublas(cublasCreate(&g_handle), "cublasCreate");
        g_stream = static_cast<cudaStream_t>(stream);
        check_cublas(cublasSetStream(g_handle, g_stream), "cublasSetStream");
        check_cublas(cublasSetMathMode(g_handle, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    });
}

NL_API nl_status nl_shutdown(void) {
    return guarded("nl_shutdown", [&] {
        if (g_handle != nullptr) {
            cublasDestroy(g_handle);
            g_handle = nullptr;
        }
        g_context = nullptr;
        g_stream = nullptr;
    });
}

NL_API nl_status nl_set_stream(void* stream) {
    return guarded("nl_set_stream", [&] {
        make_current();
        g_stream = static_cast<cudaStream_t>(stream);
        check_cublas(cublasSetStream(g_handle, g_stream), "cublasSetStream");
    });
}

NL_API nl_status nl_synchronize(void) {
    return guarded("nl_synchronize", [&] {
        make_current();
        check_cuda(cudaStreamSynchronize(g_stream), "cudaStreamSynchronize");
    });
}

NL_API nl_status nl_device_memory_info(size_t* free_bytes, size_t* total_bytes) {
    return guarded("nl_device_memory_info", [&] {
        require(free_bytes != nullptr && total_bytes != nullptr, "output pointers must not be NULL");
        make_current();
        check_cuda(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
    });
}

NL_API nl_status nl_query_device_stats(nl_device_stats* out) {
    return guarded("nl_query_device_stats", [&] {
        require(out != nullptr, "output pointer must not be NULL");
        *out = nl_device_stats{};
        out->utilization_percent = -1;
        out->memory_used_bytes = out->memory_total_bytes = -1;
        nl::process_stats(&out->process_cpu_seconds, &out->process_rss_bytes);
        make_current();
        // NVML numbers devices in its own order (all GPUs, ignoring CUDA_VISIBLE_DEVICES); the PCI bus id
        // names the same card for both
        check_cuda(cudaDeviceGetPCIBusId(out->pci_bus_id, sizeof(out->pci_bus_id), g_device), "cudaDeviceGetPCIBusId");
        std::lock_guard<std::mutex> lock(nvml::g_mutex);
        nvml::Memory mem{};
        nvml::Utilization util{};
        if (nvml::bind(g_device, out->pci_bus_id) && nvml::g_api.memory(nvml::g_api.device, &mem) == 0) {
            out->source = NL_STATS_NVML;
            out->memory_total_bytes = static_cast<int64_t>(mem.total);
            out->memory_used_bytes = static_cast<int64_t>(mem.used);
            if (nvml::g_api.utilization(nvml::g_api.device, &util) == 0) out->utilization_percent = static_cast<int32_t>(util.gpu);
            return;
        }
        out->source = NL_STATS_CUDA_RUNTIME;
        size_t free_bytes = 0, total_bytes = 0;
        check_cuda(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
        out->memory_total_bytes = static_cast<int64_t>(total_bytes);
        out->memory_used_bytes = static_cast<int64_t>(total_bytes - free_bytes);
    });
}

NL_API nl_status nl_gemm(nl_dtype ab_dtype, nl_dtype c_dtype, int trans_a, int trans_b, int m, int n, int k,
                         float alpha, const void* a, int lda, const void* b, int ldb, float beta, void* c, int ldc) {
    return guarded("nl_gemm", [&] {
        nl::check_gemm_args(ab_dtype, c_dtype, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc);
        make_current();
        gemm_batched(ab_dtype, c_dtype, trans_a, trans_b, m, n, k, alpha, a, lda, 0, b, ldb, 0, beta, c, ldc, 0, 1);
    });
}

NL_API nl_status nl_gemm_strided_batched(nl_dtype ab_dtype, nl_dtype c_dtype, int trans_a, int trans_b, int m, int n, int k,
                                         float alpha, const void* a, int lda, int64_t stride_a,
                                         const void* b, int ldb, int64_t stride_b, float beta, void* c,
                                         int ldc, int64_t stride_c, int batch) {
    return guarded("nl_gemm_strided_batched", [&] {
        nl::check_gemm_args(ab_dtype, c_dtype, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc);
        require(batch >= 0, "batch must be >= 0, got " + std::to_string(batch));
        require(stride_a >= 0 && stride_b >= 0 && stride_c >= 0, "strides must be >= 0");
        make_current();
        gemm_batched(ab_dtype, c_dtype, trans_a, trans_b, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta, c, ldc,
                     stride_c, batch);
    });
}

NL_API nl_status nl_managed_alloc(size_t bytes, void** out_ptr) {
    return guarded("nl_managed_alloc", [&] {
        require(out_ptr != nullptr, "out_ptr is NULL");
        *out_ptr = nullptr;
        require(bytes > 0, "bytes must be > 0");
        make_current();
        // Never ask for more than the card could hold: managed memory oversubscription is
        // allowed by CUDA, but a paged optimizer larger than the whole card is a planning bug.
        size_t free_b = 0, total_b = 0;
        check_cuda(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
        if (bytes > total_b)
            fail(NL_ERR_OUT_OF_MEMORY, "requested " + std::to_string(bytes) + " bytes of managed memory, the device has " +
                                           std::to_string(total_b) + " in total");
        void* p = nullptr;
        check_cuda(cudaMallocManaged(&p, bytes, cudaMemAttachGlobal), "cudaMallocManaged");
        check_cuda(cudaMemsetAsync(p, 0, bytes, g_stream), "cudaMemsetAsync");
        *out_ptr = p;
    });
}

NL_API nl_status nl_managed_free(void* ptr) {
    return guarded("nl_managed_free", [&] {
        if (ptr == nullptr) return;
        make_current();
        check_cuda(cudaStreamSynchronize(g_stream), "cudaStreamSynchronize");
        check_cuda(cudaFree(ptr), "cudaFree");
    });
}

NL_API nl_status nl_managed_advise(void* ptr, size_t bytes, nl_mem_advice advice) {
    return guarded("nl_managed_advise", [&] {
        require(ptr != nullptr, "ptr is NULL");
        make_current();
        switch (advice) {
            case NL_ADVISE_PREFER_DEVICE: mem_advise(ptr, bytes, cudaMemAdviseSetPreferredLocation, true); break;
            case NL_ADVISE_PREFER_HOST: mem_advise(ptr, bytes, cudaMemAdviseSetPreferredLocation, false); break;
            case NL_ADVISE_ACCESSED_BY_DEVICE: mem_advise(ptr, bytes, cudaMemAdviseSetAccessedBy, true); break;
            default: fail(NL_ERR_INVALID_ARGUMENT, "unknown advice");
        }
    });
}

NL_API nl_status nl_managed_prefetch(void* ptr, size_t bytes, int to_device) {
    return guarded("nl_managed_prefetch", [&] {
        require(ptr != nullptr, "ptr is NULL");
        make_current();
        mem_prefetch(ptr, bytes, to_device != 0);
    });
}

NL_API nl_status nl_stream_create(void** out_stream) {
    return guarded("nl_stream_create", [&] {
        require(out_stream != nullptr, "out_stream is NULL");
        make_current();
        cudaStream_t s = nullptr;
        check_cuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
        *out_stream = s;
    });
}

NL_API nl_status nl_stream_destroy(void* stream) {
    return guarded("nl_stream_destroy", [&] {
        if (stream == nullptr) return;
        make_current();
        check_cuda(cudaStreamDestroy(static_cast<cudaStream_t>(stream)), "cudaStreamDestroy");
    });
}

NL_API nl_status nl_stream_synchronize(void* stream) {
    return guarded("nl_stream_synchronize", [&] {
        make_current();
        check_cuda(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
    });
}

NL_API nl_status nl_event_create(void** out_event) {
    return guarded("nl_event_create", [&] {
        require(out_event != nullptr, "out_event is NULL");
        make_current();
        cudaEvent_t e = nullptr;
        check_cuda(cudaEventCreate(&e), "cudaEventCreate");
        *out_event = e;
    });
}

NL_API nl_status nl_event_destroy(void* event) {
    return guarded("nl_event_destroy", [&] {
        if (event == nullptr) return;
        make_current();
        check_cuda(cudaEventDestroy(static_cast<cudaEvent_t>(event)), "cudaEventDestroy");
    });
}

NL_API nl_status nl_event_record(void* event, void* stream) {
    return guarded("nl_event_record", [&] {
        require(event != nullptr, "event is NULL");
        make_current();
        check_cuda(cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(stream)),
                   "cudaEventRecord");
    });
}

NL_API nl_status nl_event_synchronize(void* event) {
    return guarded("nl_event_synchronize", [&] {
        require(event != nullptr, "event is NULL");
        make_current();
        check_cuda(cudaEventSynchronize(static_cast<cudaEvent_t>(event)), "cudaEventSynchronize");
    });
}

NL_API nl_status nl_event_elapsed_ms(void* start, void* end, float* out_ms) {
    return guarded("nl_event_elapsed_ms", [&] {
        require(start != nullptr && end != nullptr && out_ms != nullptr, "NULL argument");
        make_current();
        check_cuda(cudaEventElapsedTime(out_ms, static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(end)),
                   "cudaEventElapsedTime");
    });
}

}  // extern "C"
