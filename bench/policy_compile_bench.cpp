// Policy compile (and parse) cost as the rule count grows: a reload must stay
// well under a second even for 100,000 CIDR rules.
//
// Baseline (same run): compiling 1,000 rules; per-rule cost at 100,000 rules
// is reported against it. Targets (asserted, exit 1 when missed): parse +
// compile of 100,000 rules < 1 s; per-rule compile cost at 100,000 rules at
// most 3x the 1,000-rule figure (no super-linear blow-up).
#include <benchmark/benchmark.h>

#include <random>

#include "policy/compile.hpp"
#include "random_cidr.hpp"
#include "targets.hpp"
#include "policy/parse.hpp"

using namespace redir::policy;

namespace {

// Realistic mix: mostly IPv4 /16-/32 with a port or two drawn from a few
// hundred services, some IPv6, 10% denies punching holes into the allows.
Policy make_policy(int n, uint32_t seed) {
    std::mt19937 rng(seed);
    Policy p;
    p.name = "bench";
    p.source = "bench.json";
    for (int i = 0; i < n; ++i) {
        Rule r;
        r.cidr = redir::testsupport::random_cidr(rng);
        uint16_t port = static_cast<uint16_t>(1000 + 20 * (rng() % 200));  // a few hundred distinct services
        r.ports = {{port, port}};
        if (rng() % 3 == 0) r.ports.push_back({static_cast<uint16_t>(port + 1), static_cast<uint16_t>(port + 10)});
        r.ports = normalize_ports(r.ports);
        (i % 10 == 0 ? p.deny : p.allow).push_back(std::move(r));
    }
    return p;
}

void BM_Compile(benchmark::State& state) {
    Policy p = make_policy(static_cast<int>(state.range(0)), 42);
    size_t entries = 0;
    for (auto _ : state) {
        auto cp = compile(p, 1);
        entries = cp.lpm.size();
        benchmark::DoNotOptimize(cp);
    }
    state.counters["lpm_entries"] = static_cast<double>(entries);
    state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_Compile)->Arg(1000)->Arg(10000)->Arg(100000)->Unit(benchmark::kMillisecond);

void BM_ParseAndCompile(benchmark::State& state) {
    std::string text = to_json(make_policy(static_cast<int>(state.range(0)), 42));
    for (auto _ : state) {
        auto r = parse_policy(text, "bench.json");
        if (!r.ok()) {
            state.SkipWithError(r.error_text().c_str());
            return;
        }
        auto cp = compile(*r.policy, 1);
        benchmark::DoNotOptimize(cp);
    }
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(text.size()));
}
BENCHMARK(BM_ParseAndCompile)->Arg(100000)->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
    return redir::bench::run_with_targets(argc, argv, [](const redir::bench::RecordingReporter& rep) {
        const double c1k = rep.ns("BM_Compile/1000"), c100k = rep.ns("BM_Compile/100000");
        const double pc100k = rep.ns("BM_ParseAndCompile/100000");
        bool ok = redir::bench::check("parse + compile, 100,000 rules", pc100k / 1e6, 1000, "ms");
        ok &= redir::bench::check("per-rule compile cost, 100k rules / 1k rules (same run)",
                                  redir::bench::same_run_ratio(c100k / 1e5, c1k / 1e3), 3, "x");
        return ok;
    });
}
