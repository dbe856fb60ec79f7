#include "errors.h"

#include <string>

namespace nl {

static thread_local std::string g_last_error;

void set_error(const std::string& message) { g_last_error = message; }
void clear_error() { g_last_error.clear(); }

void check_gemm_args(nl_dtype ab_dtype, nl_dtype c_dtype, int trans_a, int trans_b, int m, int n, int k,
                     const void* a, int lda, const void* b, int ldb, const void* c, int ldc) {
    require(ab_dtype == NL_DTYPE_F32 || ab_dtype == NL_DTYPE_F16 || ab_dtype == NL_DTYPE_BF16,
            "unknown dtype " + std::to_string(static_cast<int>(ab_dtype)));
    require(c_dtype == ab_dtype || c_dtype == NL_DTYPE_F32,
            "the result dtype must equal the operands' dtype or be F32 (got ab=" + std::to_string(static_cast<int>(ab_dtype)) +
                ", c=" + std::to_string(static_cast<int>(c_dtype)) + ")");
    require(m >= 0 && n >= 0 && k >= 0, "negative size m=" + std::to_string(m) +
                                            " n=" + std::to_string(n) + " k=" + std::to_string(k));
    require(trans_a == 0 || trans_a == 1, "trans_a must be 0 or 1");
    require(trans_b == 0 || trans_b == 1, "trans_b must be 0 or 1");
    if (m == 0 || n == 0) return;
    require(c != nullptr, "c is NULL");
    // Row-major: stored A is m×k (or k×m when transposed); its row length bounds lda.
    const int a_cols = trans_a ? m : k;
    const int b_cols = trans_b ? k : n;
    if (k > 0) {
        require(a != nullptr, "a is NULL");
        require(b != nullptr, "b is NULL");
        require(lda >= (a_cols > 1 ? a_cols : 1), "lda=" + std::to_string(lda) + " < " + std::to_string(a_cols));
        require(ldb >= (b_cols > 1 ? b_cols : 1), "ldb=" + std::to_string(ldb) + " < " + std::to_string(b_cols));
    }
    require(ldc >= (n > 1 ? n : 1), "ldc=" + std::to_string(ldc) + " < " + std::to_string(n));
}

}  // namespace nl

extern "C" NL_API const char* nl_last_error_message(void) { return nl::g_last_error.c_str(); }
extern "C" NL_API int nl_abi_version(void) { return NL_ABI_VERSION; }
