// Cost of serving a TLS name the terminator has not seen yet (leaf issuance)
// and of one it has (cache hit). Issuance sits on the first handshake for a
// name and once a week per name afterwards; the hit sits on every handshake.
//
// Baseline (same run): a bare P-256 key generation, the part of issuance no
// code of ours can speed up; the ratio issuance / keygen is reported.
// Targets (asserted, exit 1 when missed): issuance with a ready SSL_CTX < 1 ms
// (a first handshake must not stall); a cache hit < 1 us (every handshake).
#include <benchmark/benchmark.h>
#include <stdlib.h>

#include <filesystem>

#include "targets.hpp"
#include "tls/leaf_cache.hpp"

namespace {

using namespace redir::tls;

struct Fixture {
    std::string dir;
    LocalCa ca;
    LeafIssuer issuer;
    LeafCache cache;

    static std::string make_dir() {
        std::string tmpl = (std::filesystem::temp_directory_path() / "redir-tls-bench.XXXXXX").string();
        if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
        return tmpl;
    }
    Fixture() : dir(make_dir()), ca(LocalCa::load_or_create(dir, {})), issuer(ca), cache(ca, {}) {}
    ~Fixture() {
        std::error_code ec;
        std::filesystem::remove_all(dir, ec);
    }
};

Fixture& fixture() {
    static Fixture f;
    return f;
}

void BM_P256Keygen(benchmark::State& state) {
    for (auto _ : state) benchmark::DoNotOptimize(generate_p256_key());
}
BENCHMARK(BM_P256Keygen)->Unit(benchmark::kMicrosecond);

// Key generation + certificate build + ECDSA signature.
void BM_LeafIssueCert(benchmark::State& state) {
    auto& f = fixture();
    auto now = std::chrono::system_clock::now();
    for (auto _ : state) benchmark::DoNotOptimize(f.issuer.issue_cert(kInferenceName, now));
}
BENCHMARK(BM_LeafIssueCert)->Unit(benchmark::kMicrosecond);

// What a cache miss costs: the above plus the leaf's ready SSL_CTX.
void BM_LeafIssueWithSslCtx(benchmark::State& state) {
    auto& f = fixture();
    auto now = std::chrono::system_clock::now();
    for (auto _ : state) benchmark::DoNotOptimize(f.issuer.issue(kInferenceName, now));
}
BENCHMARK(BM_LeafIssueWithSslCtx)->Unit(benchmark::kMicrosecond);

void BM_LeafCacheHit(benchmark::State& state) {
    auto& f = fixture();
    f.cache.get(kInferenceName);
    for (auto _ : state) benchmark::DoNotOptimize(f.cache.get("inference.local"));
}
BENCHMARK(BM_LeafCacheHit)->Unit(benchmark::kNanosecond)->Threads(1)->Threads(2);

}  // namespace

int main(int argc, char** argv) {
    return redir::bench::run_with_targets(argc, argv, [](const redir::bench::RecordingReporter& rep) {
        const double keygen = rep.ns("BM_P256Keygen"), miss = rep.ns("BM_LeafIssueWithSslCtx");
        const double hit = rep.ns("BM_LeafCacheHit/threads:1");
        if (const double r = redir::bench::same_run_ratio(miss, keygen); r > 0)
            std::printf("issuance with SSL_CTX / P-256 keygen (same run): %.1fx\n", r);
        bool ok = redir::bench::check("leaf issuance with a ready SSL_CTX (cache miss)", miss / 1e3, 1000, "us");
        ok &= redir::bench::check("leaf cache hit", hit, 1000, "ns");
        return ok;
    });
}
