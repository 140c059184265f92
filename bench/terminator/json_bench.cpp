// The terminator's per-request JSON and string work for a typical chat call
// (a ~4 KB request with a system prompt, turns and two tools; a ~700-byte
// completion with usage), the path as it is against the path it replaced,
// rebuilt in the same run from the public functions:
//   old: the rapidjson Reader + Writer rewrite (tests/support/rewrite_reference.hpp),
//        then find_provider_fetch parsing the rewritten body again; the audit line through rapidjson::Writer into a StringBuffer
//        and a std::string; parse_base_url, upstream_headers() as a list and
//        upstream_target per request;
//   new: one pass (rewrite_model copying the client's bytes, splicing the
//        model, feeding a FetchScanner); the audit line into
//        a reused buffer; the base URL and the provider's headers from the
//        snapshot, headers emitted without a list.
// The old path reads the response's usage with the reference scanner, the
// new one with JsonUsageScanner. Floor: a
// rapidjson Reader with a null handler over the request (same flags).
// The response usage scan on its own: JsonUsageScanner/SseUsageScanner
// against their byte-at-a-time reference (tests/support/usage_reference.hpp)
// on bench/peers' small fixed answer, the ~700-byte completion, and an
// OpenAI stream fed one event a piece as the relay reads it.
// The rewrite with its scan on its own: rewrite_model against the rapidjson
// rewrite it replaced (both one pass, with a FetchScanner), on the ~4 KB
// request and bench/peers' small one.
// Targets (CPU time, exit 1 when missed): the new path no slower than the old
// one, the one-pass rewrite + scan no slower than the two passes, the rewrite
// at most 0.6 of the rapidjson one on either request, and each usage scan no
// slower than its reference.
#include <benchmark/benchmark.h>

#include <rapidjson/reader.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "targets.hpp"
#include "terminator/profiles.hpp"
#include "terminator/provider_fetch.hpp"
#include "terminator/request.hpp"
#include "terminator/store.hpp"
#include "terminator/usage.hpp"
#include "rewrite_reference.hpp"
#include "terminator_reference.hpp"
#include "usage_reference.hpp"

using namespace redir::terminator;

namespace {

std::string chat_request() {
    std::string sys(900, 'S');
    for (std::size_t i = 0; i < sys.size(); i += 7) sys[i] = ' ';
    std::string b = R"({"model":"gpt-4o-mini","messages":[{"role":"system","content":")" + sys + R"("},)";
    for (int t = 0; t < 4; ++t) {
        b += R"({"role":"user","content":"Question )" + std::to_string(t) +
             R"(: what does the function below return when called with \"x\" set to 42?\nfn f(x) { return x * 2 + 1; }\n"},)";
        b += R"({"role":"assistant","content":"It returns 85: 42 times 2 is 84, plus 1. Anything else?","tool_calls":[{"id":"call_)" +
             std::to_string(t) + R"(","type":"function","function":{"name":"lookup","arguments":"{\"q\":\"x\",\"limit\":10}"}}]},)";
        b += R"({"role":"tool","tool_call_id":"call_)" + std::to_string(t) + R"(","content":"{\"rows\":[1,2,3],\"ok\":true}"},)";
    }
    b += R"({"role":"user","content":"Thanks. Summarise the above in one sentence."}],)";
    b += R"("tools":[{"type":"function","function":{"name":"lookup","description":"Looks a value up in the table.","parameters":{"type":"object","properties":{"q":{"type":"string","description":"what to look for"},"limit":{"type":"integer","minimum":1,"maximum":100}},"required":["q"]}}},)";
    b += R"({"type":"function","function":{"name":"fetch_page","description":"Reads one page of results.","parameters":{"type":"object","properties":{"page":{"type":"integer"},"cursor":{"type":"string"}},"required":["page"]}}}],)";
    b += R"("tool_choice":"auto","temperature":0.2,"top_p":1,"max_tokens":512,"stream":false,"user":"sandbox-7"})";
    return b;
}

const std::string kResponse =
    R"({"id":"chatcmpl-8Zq3x","object":"chat.completion","created":1733260000,"model":"gpt-4o-mini-2024-07-18",)"
    R"("choices":[{"index":0,"message":{"role":"assistant","content":"The function doubles its input and adds one, )"
    R"(so f(42) returns 85; the lookups returned three rows each and succeeded.","refusal":null},"logprobs":null,)"
    R"("finish_reason":"stop"}],"usage":{"prompt_tokens":1032,"completion_tokens":31,"total_tokens":1063,)"
    R"("prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,)"
    R"("audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"system_fingerprint":"fp_0ba0d124f1"})";

// bench/peers' fake provider's answer (peers.py PROVIDER_JSON).
const std::string kSmallResponse =
    R"({"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"served-model",)"
    R"("choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],)"
    R"("usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}})";

// An OpenAI chat stream with include_usage: 60 content chunks, the usage
// chunk, [DONE]; one event per piece.
std::vector<std::string> sse_events() {
    std::vector<std::string> ev;
    for (int i = 0; i < 60; ++i)
        ev.push_back(R"(data: {"id":"chatcmpl-8Zq3x","object":"chat.completion.chunk","created":1733260000,)"
                     R"("model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,)"
                     R"("delta":{"content":" word)" + std::to_string(i) + R"("},"logprobs":null,"finish_reason":null}],"usage":null})"
                     "\n\n");
    ev.push_back(R"(data: {"id":"chatcmpl-8Zq3x","object":"chat.completion.chunk","created":1733260000,)"
                 R"("model":"gpt-4o-mini-2024-07-18","choices":[],"usage":{"prompt_tokens":1032,"completion_tokens":60,"total_tokens":1092}})"
                 "\n\n");
    ev.push_back("data: [DONE]\n\n");
    return ev;
}
const std::vector<std::string> kSseEvents = sse_events();

// What an OpenAI SDK sends, names already lower case.
const HeaderList kClient = {
    {"host", "inference.local"},          {"accept-encoding", "gzip, deflate"},
    {"connection", "keep-alive"},         {"accept", "application/json"},
    {"content-type", "application/json"}, {"user-agent", "OpenAI/Python 1.54.0"},
    {"x-stainless-lang", "python"},       {"x-stainless-package-version", "1.54.0"},
    {"x-stainless-os", "Linux"},          {"x-stainless-arch", "x64"},
    {"x-stainless-runtime", "CPython"},   {"x-stainless-runtime-version", "3.11.2"},
    {"authorization", "Bearer placeholder"}, {"x-stainless-retry-count", "0"},
    {"content-length", "4096"},
};

const Provider kProvider{"openai", "openai", "https://api.openai.com/v1", "", {{"OPENAI_API_KEY", "sk-" + std::string(48, 'k')}}};

RequestLog record() {
    RequestLog r;
    r.conn.cgroup_id = 123456;
    r.conn.pid = 4242;
    r.conn.client = "10.0.3.2:51234";
    r.method = "POST";
    r.path = "/v1/chat/completions";
    r.route = "default";
    r.provider = "openai";
    r.provider_type = "openai";
    r.model_requested = "gpt-4o-mini";
    r.model_used = "gpt-4o-mini";
    r.config_version = 3;
    r.status = 200;
    r.bytes_in = 4096;
    r.bytes_out = 700;
    r.duration_ms = 1.234567;
    r.usage.input_tokens = 1032;
    r.usage.output_tokens = 31;
    r.credential = CredentialUse{"authorization", "OPENAI_API_KEY"};
    return r;
}

const std::string kRequest = chat_request();
// bench/peers' request (wrk_post.lua without WRK_BODY_FILE).
const std::string kSmallRequest = R"({"model":"client-model","messages":[{"role":"user","content":"hi"}],"max_tokens":16})";
const Profile& kProfile = *find_profile("openai");

// ---- Pieces

void BM_Floor_ReaderNullHandler(benchmark::State& state) {
    for (auto _ : state) {
        rapidjson::BaseReaderHandler<> h;
        rapidjson::MemoryStream ms(kRequest.data(), kRequest.size());
        rapidjson::Reader reader;
        constexpr unsigned flags = rapidjson::kParseIterativeFlag | rapidjson::kParseNumbersAsStringsFlag |
                                   rapidjson::kParseValidateEncodingFlag;
        benchmark::DoNotOptimize(reader.Parse<flags>(ms, h));
    }
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(kRequest.size()));
}

void BM_Request_TwoPasses(benchmark::State& state) {
    for (auto _ : state) {
        auto rw = reference::rewrite_model(kRequest, "served-model", kLogStringMax, true);
        auto f = find_provider_fetch(rw.body, kClient);
        benchmark::DoNotOptimize(rw);
        benchmark::DoNotOptimize(f);
    }
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(kRequest.size()));
}

void BM_Request_Small(benchmark::State& state) {
    for (auto _ : state) {
        FetchScanner sc;
        auto rw = rewrite_model(kSmallRequest, "served-model", kLogStringMax, true, &sc);
        auto f = find_provider_fetch(sc, kClient);
        benchmark::DoNotOptimize(rw);
        benchmark::DoNotOptimize(f);
    }
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(kSmallRequest.size()));
}

template <class Rewrite>
void rewrite_with_scan(benchmark::State& state, const std::string& body, Rewrite rewrite) {
    for (auto _ : state) {
        FetchScanner sc;
        auto rw = rewrite(body, "served-model", kLogStringMax, true, &sc);
        benchmark::DoNotOptimize(rw);
        benchmark::DoNotOptimize(sc.finding());
    }
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(body.size()));
}
void BM_Rewrite_Reference(benchmark::State& s) { rewrite_with_scan(s, kRequest, reference::rewrite_model); }
void BM_Rewrite(benchmark::State& s) { rewrite_with_scan(s, kRequest, rewrite_model); }
void BM_Rewrite_Small_Reference(benchmark::State& s) { rewrite_with_scan(s, kSmallRequest, reference::rewrite_model); }
void BM_Rewrite_Small(benchmark::State& s) { rewrite_with_scan(s, kSmallRequest, rewrite_model); }

void BM_Request_OnePass(benchmark::State& state) {
    for (auto _ : state) {
        FetchScanner sc;
        auto rw = rewrite_model(kRequest, "served-model", kLogStringMax, true, &sc);
        auto f = find_provider_fetch(sc, kClient);
        benchmark::DoNotOptimize(rw);
        benchmark::DoNotOptimize(f);
    }
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(kRequest.size()));
}

template <class Scanner>
void usage_of_json(benchmark::State& state, const std::string& body) {
    for (auto _ : state) {
        Scanner u;
        u.feed(body);
        benchmark::DoNotOptimize(u.fields().usage());
    }
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(body.size()));
}
void BM_Usage_Small_Reference(benchmark::State& s) { usage_of_json<reference::JsonUsageScanner>(s, kSmallResponse); }
void BM_Usage_Small(benchmark::State& s) { usage_of_json<JsonUsageScanner>(s, kSmallResponse); }
void BM_Usage_Json_Reference(benchmark::State& s) { usage_of_json<reference::JsonUsageScanner>(s, kResponse); }
void BM_Usage_Json(benchmark::State& s) { usage_of_json<JsonUsageScanner>(s, kResponse); }

template <class Scanner>
void usage_of_sse(benchmark::State& state) {
    std::size_t bytes = 0;
    for (const auto& e : kSseEvents) bytes += e.size();
    for (auto _ : state) {
        Scanner u;
        for (const auto& e : kSseEvents) u.feed(e);
        benchmark::DoNotOptimize(u.fields().usage());
    }
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(bytes));
}
void BM_Usage_Sse_Reference(benchmark::State& s) { usage_of_sse<reference::SseUsageScanner>(s); }
void BM_Usage_Sse(benchmark::State& s) { usage_of_sse<SseUsageScanner>(s); }

void BM_AuditLine_RapidjsonWriter(benchmark::State& state) {
    const RequestLog r = record();
    for (auto _ : state) benchmark::DoNotOptimize(reference::log_json(r));
}

void BM_AuditLine_ReusedBuffer(benchmark::State& state) {
    const RequestLog r = record();
    for (auto _ : state) benchmark::DoNotOptimize(request_log_line(r));
}

void BM_Upstream_PerRequest(benchmark::State& state) {
    for (auto _ : state) {
        std::string err;
        auto base = parse_base_url(kProvider.base_url, &err);
        auto target = upstream_target(*base, kProfile, "/v1/chat/completions", "");
        auto headers = upstream_headers(kClient, kProfile, kProvider);
        benchmark::DoNotOptimize(target);
        benchmark::DoNotOptimize(headers);
    }
}

void BM_Upstream_FromSnapshot(benchmark::State& state) {
    Snapshot snap;
    snap.provider = kProvider;
    derive_upstream(snap);
    for (auto _ : state) {
        auto target = upstream_target(*snap.base, kProfile, "/v1/chat/completions", "");
        std::size_t n = 0;
        each_upstream_header(kClient, kProfile, snap.provider_headers,
                             [&n](std::string_view a, std::string_view b) { n += a.size() + b.size(); });
        benchmark::DoNotOptimize(target);
        benchmark::DoNotOptimize(n);
    }
}

// ---- The whole per-request JSON and string work

void BM_Path_Old(benchmark::State& state) {
    const RequestLog r = record();
    for (auto _ : state) {
        auto rw = reference::rewrite_model(kRequest, "served-model", kLogStringMax, true);
        auto f = find_provider_fetch(rw.body, kClient);
        std::string err;
        auto base = parse_base_url(kProvider.base_url, &err);
        auto target = upstream_target(*base, kProfile, "/v1/chat/completions", "");
        auto headers = upstream_headers(kClient, kProfile, kProvider);
        reference::JsonUsageScanner u;
        u.feed(kResponse);
        auto line = reference::log_json(r);
        benchmark::DoNotOptimize(rw);
        benchmark::DoNotOptimize(f);
        benchmark::DoNotOptimize(target);
        benchmark::DoNotOptimize(headers);
        benchmark::DoNotOptimize(u.fields().usage());
        benchmark::DoNotOptimize(line);
    }
}

void BM_Path_New(benchmark::State& state) {
    const RequestLog r = record();
    Snapshot snap;
    snap.provider = kProvider;
    derive_upstream(snap);
    for (auto _ : state) {
        FetchScanner sc;
        auto rw = rewrite_model(kRequest, "served-model", kLogStringMax, true, &sc);
        auto f = find_provider_fetch(sc, kClient);
        auto target = upstream_target(*snap.base, kProfile, "/v1/chat/completions", "");
        std::size_t n = 0;
        each_upstream_header(kClient, kProfile, snap.provider_headers,
                             [&n](std::string_view a, std::string_view b) { n += a.size() + b.size(); });
        JsonUsageScanner u;
        u.feed(kResponse);
        auto line = request_log_line(r);
        benchmark::DoNotOptimize(rw);
        benchmark::DoNotOptimize(f);
        benchmark::DoNotOptimize(target);
        benchmark::DoNotOptimize(n);
        benchmark::DoNotOptimize(u.fields().usage());
        benchmark::DoNotOptimize(line);
    }
}

BENCHMARK(BM_Floor_ReaderNullHandler);
BENCHMARK(BM_Request_TwoPasses);
BENCHMARK(BM_Request_OnePass);
BENCHMARK(BM_Request_Small);
BENCHMARK(BM_Rewrite_Reference);
BENCHMARK(BM_Rewrite);
BENCHMARK(BM_Rewrite_Small_Reference);
BENCHMARK(BM_Rewrite_Small);
BENCHMARK(BM_Usage_Small_Reference);
BENCHMARK(BM_Usage_Small);
BENCHMARK(BM_Usage_Json_Reference);
BENCHMARK(BM_Usage_Json);
BENCHMARK(BM_Usage_Sse_Reference);
BENCHMARK(BM_Usage_Sse);
BENCHMARK(BM_AuditLine_RapidjsonWriter);
BENCHMARK(BM_AuditLine_ReusedBuffer);
BENCHMARK(BM_Upstream_PerRequest);
BENCHMARK(BM_Upstream_FromSnapshot);
BENCHMARK(BM_Path_Old);
BENCHMARK(BM_Path_New);

}  // namespace

int main(int argc, char** argv) {
    // The sample request for an end-to-end run (bench/peers: WRK_BODY_FILE).
    if (argc > 1 && std::string_view(argv[1]) == "--print-request") {
        std::fwrite(kRequest.data(), 1, kRequest.size(), stdout);
        return 0;
    }
    // The two paths must do the same work: same body out, same verdict.
    {
        FetchScanner sc;
        auto one = rewrite_model(kRequest, "served-model", kLogStringMax, true, &sc);
        auto two = reference::rewrite_model(kRequest, "served-model", kLogStringMax, true);
        if (!one.ok || one.body != two.body || find_provider_fetch(sc, kClient).has_value() ||
            find_provider_fetch(two.body, kClient).has_value() || request_log_line(record()) != reference::log_json(record())) {
            std::fprintf(stderr, "bench_terminator_json: the old and new paths disagree on the sample request\n");
            return 2;
        }
        auto same_usage = [](const UsageFields& a, const UsageFields& b) {
            return a.usage().input_tokens == b.usage().input_tokens && a.usage().output_tokens == b.usage().output_tokens;
        };
        for (const std::string* body : {&kSmallResponse, &kResponse}) {
            JsonUsageScanner n;
            reference::JsonUsageScanner r;
            n.feed(*body);
            r.feed(*body);
            if (!n.fields().usage().known() || !same_usage(n.fields(), r.fields())) {
                std::fprintf(stderr, "bench_terminator_json: the usage scanners disagree on a sample answer\n");
                return 2;
            }
        }
        {
            SseUsageScanner n;
            reference::SseUsageScanner r;
            for (const auto& e : kSseEvents) n.feed(e), r.feed(e);
            if (!n.usage().known() || !same_usage(n.fields(), r.fields())) {
                std::fprintf(stderr, "bench_terminator_json: the usage scanners disagree on the sample stream\n");
                return 2;
            }
        }
        std::printf("request %zu bytes, response %zu bytes, audit line %zu bytes\n", kRequest.size(), kResponse.size(),
                    reference::log_json(record()).size());
    }
    return redir::bench::run_with_targets(argc, argv, [](const redir::bench::RecordingReporter& rep) {
        using redir::bench::check;
        using redir::bench::same_run_ratio;
        const double floor = rep.ns("BM_Floor_ReaderNullHandler");
        const double two = rep.ns("BM_Request_TwoPasses"), one = rep.ns("BM_Request_OnePass");
        const double old_path = rep.ns("BM_Path_Old"), new_path = rep.ns("BM_Path_New");
        const double rewrite = same_run_ratio(rep.ns("BM_Rewrite"), rep.ns("BM_Rewrite_Reference"));
        const double rewrite_small = same_run_ratio(rep.ns("BM_Rewrite_Small"), rep.ns("BM_Rewrite_Small_Reference"));
        std::printf("rewrite + scan / rapidjson rewrite (same run): 4 KB request %.2f, small request %.2f\n", rewrite,
                    rewrite_small);
        const double usage_small = same_run_ratio(rep.ns("BM_Usage_Small"), rep.ns("BM_Usage_Small_Reference"));
        const double usage_json = same_run_ratio(rep.ns("BM_Usage_Json"), rep.ns("BM_Usage_Json_Reference"));
        const double usage_sse = same_run_ratio(rep.ns("BM_Usage_Sse"), rep.ns("BM_Usage_Sse_Reference"));
        std::printf("usage scan / reference (same run): small answer %.2f, completion %.2f, SSE stream %.2f\n",
                    usage_small, usage_json, usage_sse);
        std::printf("ratios (same run): one pass / two passes %.2f, new path / old path %.2f, "
                    "audit line reused / writer %.2f, upstream snapshot / per request %.2f, "
                    "one pass / null-handler floor %.2f\n",
                    same_run_ratio(one, two), same_run_ratio(new_path, old_path),
                    same_run_ratio(rep.ns("BM_AuditLine_ReusedBuffer"), rep.ns("BM_AuditLine_RapidjsonWriter")),
                    same_run_ratio(rep.ns("BM_Upstream_FromSnapshot"), rep.ns("BM_Upstream_PerRequest")),
                    same_run_ratio(one, floor));
        bool ok = check("request path JSON+strings, new / old (same run)", same_run_ratio(new_path, old_path), 1.0, "x");
        ok &= check("rewrite + fetch scan, one pass / two passes (same run)", same_run_ratio(one, two), 1.0, "x");
        ok &= check("rewrite + scan, 4 KB request / rapidjson rewrite (same run)", rewrite, 0.6, "x");
        ok &= check("rewrite + scan, small request / rapidjson rewrite (same run)", rewrite_small, 0.6, "x");
        ok &= check("usage scan, small answer / reference (same run)", usage_small, 1.0, "x");
        ok &= check("usage scan, completion / reference (same run)", usage_json, 1.0, "x");
        ok &= check("usage scan, SSE stream / reference (same run)", usage_sse, 1.0, "x");
        return ok;
    });
}
