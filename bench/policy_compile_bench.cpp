// Policy compile (and parse) cost as the rule count grows: a reload must stay
// well under a second even for 100,000 CIDR rules.
#include <benchmark/benchmark.h>

#include <random>

#include "policy/compile.hpp"
#include "random_cidr.hpp"
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

BENCHMARK_MAIN();
