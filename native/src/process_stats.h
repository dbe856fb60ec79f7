// process_stats.h — the process's CPU time and resident set size, shared by both
// backends' nl_query_device_stats. -1 where the platform does not say.
#pragma once
#include <cstdint>
#include <fstream>
#include <string>

#if defined(_WIN32)
#ifndef NOMINMAX
#define NOMINMAX
#endif
#include <windows.h>
#include <psapi.h>
#else
#include <sys/resource.h>
#include <unistd.h>
#endif

namespace nl {

inline void process_stats(double* cpu_seconds, int64_t* rss_bytes) {
    *cpu_seconds = -1;
    *rss_bytes = -1;
#if defined(_WIN32)
    FILETIME created, exited, kernel, user;
    if (GetProcessTimes(GetCurrentProcess(), &created, &exited, &kernel, &user)) {
        auto ticks = [](const FILETIME& f) { return (static_cast<uint64_t>(f.dwHighDateTime) << 32) | f.dwLowDateTime; };
        *cpu_seconds = static_cast<double>(ticks(kernel) + ticks(user)) * 1e-7;  // 100 ns units
    }
    PROCESS_MEMORY_COUNTERS pmc{};
    if (K32GetProcessMemoryInfo(GetCurrentProcess(), &pmc, sizeof(pmc))) *rss_bytes = static_cast<int64_t>(pmc.WorkingSetSize);
#else
    rusage ru{};
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        *cpu_seconds = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                       static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
    // statm: size resident shared ... in pages; the current resident set, not the peak (ru_maxrss)
    std::ifstream statm("/proc/self/statm");
    long long size = 0, resident = 0;
    if (statm >> size >> resident) *rss_bytes = static_cast<int64_t>(resident) * static_cast<int64_t>(sysconf(_SC_PAGESIZE));
#endif
}

}  // namespace nl
