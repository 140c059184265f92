#pragma once
// Google Benchmark with asserted targets: a console reporter that also keeps
// each benchmark's CPU time per iteration (CPU, not wall: these 2-core machines
// are shared, and the work measured is single-threaded), so main() can check targets against
// absolute bounds and against a baseline measured in the same run, print
// them, and exit non-zero when one is missed.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace redir::bench {

class RecordingReporter : public benchmark::ConsoleReporter {
public:
    void ReportRuns(const std::vector<Run>& runs) override {
        for (const auto& r : runs)
            if (!r.error_occurred) ns_[r.benchmark_name()] = r.GetAdjustedCPUTime() * to_ns(r.time_unit);
        ConsoleReporter::ReportRuns(runs);
    }
    // Nanoseconds per iteration of NAME (as Google Benchmark names it), or -1.
    double ns(const std::string& name) const {
        auto it = ns_.find(name);
        return it == ns_.end() ? -1 : it->second;
    }

private:
    static double to_ns(benchmark::TimeUnit u) {
        switch (u) {
            case benchmark::kNanosecond: return 1;
            case benchmark::kMicrosecond: return 1e3;
            case benchmark::kMillisecond: return 1e6;
            default: return 1e9;
        }
    }
    std::map<std::string, double> ns_;
};

// Prints one target line; returns false when missed (or not measured).
inline bool check(const char* what, double value, double limit, const char* unit) {
    const bool ok = value >= 0 && value <= limit;
    std::printf("target %-58s %10.3f %s (limit %.3f %s): %s\n", what, value, unit, limit, unit, ok ? "met" : "MISSED");
    return ok;
}

// NUM / DEN of two figures of the same run, or -1 (a missed target) when
// either was not measured.
inline double same_run_ratio(double num, double den) { return num > 0 && den > 0 ? num / den : -1; }

// The whole main() of a benchmark with targets: runs the benchmarks ARGV
// selects, then CHECKS, which prints each target line (check()) from the
// recorded times; the exit status is 1 when CHECKS says one was missed.
inline int run_with_targets(int argc, char** argv, const std::function<bool(const RecordingReporter&)>& checks) {
    benchmark::Initialize(&argc, argv);
    RecordingReporter rep;
    benchmark::RunSpecifiedBenchmarks(&rep);
    const bool ok = checks(rep);
    benchmark::Shutdown();
    return ok ? 0 : 1;
}

}  // namespace redir::bench
