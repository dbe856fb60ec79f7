// errors.h — per-thread error text and the macro that turns C++ exceptions
// into status codes at the C boundary (an exception must never cross it).
#pragma once
#include <exception>
#include <new>
#include <string>
#include "nativelora.h"

namespace nl {

void set_error(const std::string& message);
void clear_error();

struct Error : std::exception {
    nl_status status;
    std::string message;
    Error(nl_status s, std::string m) : status(s), message(std::move(m)) {}
    const char* what() const noexcept override { return message.c_str(); }
};

[[noreturn]] inline void fail(nl_status s, const std::string& m) { throw Error(s, m); }

inline void require(bool ok, const std::string& what) {
    if (!ok) fail(NL_ERR_INVALID_ARGUMENT, what);
}

// Runs body; returns NL_OK or the status of whatever it threw, with the text saved.
template <typename F>
nl_status guarded(const char* fn, F&& body) {
    try {
        clear_error();
        body();
        return NL_OK;
    } catch (const Error& e) {
        set_error(std::string(fn) + ": " + e.message);
        return e.status;
    } catch (const std::bad_alloc&) {
        set_error(std::string(fn) + ": out of host memory");
        return NL_ERR_OUT_OF_MEMORY;
    } catch (const std::exception& e) {
        set_error(std::string(fn) + ": " + e.what());
        return NL_ERR_INTERNAL;
    } catch (...) {
        set_error(std::string(fn) + ": unknown C++ exception");
        return NL_ERR_INTERNAL;
    }
}

// Shared argument checks so both backends reject the same inputs with the same text.
void check_gemm_args(nl_dtype ab_dtype, nl_dtype c_dtype, int trans_a, int trans_b, int m, int n, int k,
                     const void* a, int lda, const void* b, int ldb, const void* c, int ldc);

}  // namespace nl
