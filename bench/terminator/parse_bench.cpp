// The gateway's two parses per proxied request, old and new, in the
// connection's arena as the gateway runs them (released after each message):
//   old: http::request_parser<string_body> / response_parser<buffer_body>
//        with basic_fields in the arena (an element per field, the rbtree);
//   new: RequestParser / ResponseParser (flat_fields.hpp).
// Each parse is followed by what the gateway then reads: for a request the
// routing facts (head_of), keep-alive and every field once (the allowlist
// copy); for an answer Content-Type, Content-Encoding, the Connection fields
// and every field once (the relayed head). Messages: bench/peers' request
// and its nginx provider's answer, and an OpenAI SDK request and a real
// provider's answer (~20 fields).
#include <benchmark/benchmark.h>

#include <boost/asio/buffer.hpp>
#include <boost/beast/http.hpp>
#include <memory_resource>
#include <string>

#include "terminator/flat_fields.hpp"
#include "terminator/head.hpp"

using namespace redir::terminator;
namespace http = boost::beast::http;
using Alloc = std::pmr::polymorphic_allocator<char>;

namespace {

const std::string kBody = R"({"model":"client-model","messages":[{"role":"user","content":"hi"}],"max_tokens":16})";

const std::string kBenchRequest = "POST /v1/chat/completions HTTP/1.1\r\nHost: inference.local\r\n"
                                  "Content-Length: " + std::to_string(kBody.size()) +
                                  "\r\nContent-Type: application/json\r\nAuthorization: Bearer sk-client-placeholder\r\n\r\n" +
                                  kBody;

const std::string kSdkRequest =
    "POST /v1/chat/completions HTTP/1.1\r\nHost: inference.local\r\nAccept-Encoding: gzip, deflate\r\n"
    "Connection: keep-alive\r\nAccept: application/json\r\nContent-Type: application/json\r\n"
    "User-Agent: OpenAI/Python 1.54.4\r\nX-Stainless-Lang: python\r\nX-Stainless-Package-Version: 1.54.4\r\n"
    "X-Stainless-OS: Linux\r\nX-Stainless-Arch: x64\r\nX-Stainless-Runtime: CPython\r\n"
    "X-Stainless-Runtime-Version: 3.11.2\r\nAuthorization: Bearer sk-placeholder\r\nX-Stainless-Async: false\r\n"
    "x-stainless-retry-count: 0\r\nContent-Length: " + std::to_string(kBody.size()) + "\r\n\r\n" + kBody;

const std::string kAnswer = R"({"id":"x","object":"chat.completion","usage":{"prompt_tokens":9,"completion_tokens":1}})";

const std::string kNginxAnswer = "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 04 Dec 2026 16:55:00 GMT\r\n"
                                 "Content-Type: application/json\r\nContent-Length: " +
                                 std::to_string(kAnswer.size()) + "\r\nConnection: keep-alive\r\n\r\n" + kAnswer;

const std::string kProviderAnswer =
    "HTTP/1.1 200 OK\r\nDate: Fri, 04 Dec 2026 16:55:00 GMT\r\nContent-Type: application/json\r\n"
    "Content-Length: " + std::to_string(kAnswer.size()) +
    "\r\nConnection: keep-alive\r\naccess-control-expose-headers: X-Request-ID\r\n"
    "openai-organization: user-abcdefghijklmnop\r\nopenai-processing-ms: 321\r\nopenai-version: 2020-10-01\r\n"
    "x-ratelimit-limit-requests: 10000\r\nx-ratelimit-limit-tokens: 200000\r\nx-ratelimit-remaining-requests: 9999\r\n"
    "x-ratelimit-remaining-tokens: 199990\r\nx-ratelimit-reset-requests: 8.64s\r\nx-ratelimit-reset-tokens: 3ms\r\n"
    "x-request-id: req_0123456789abcdef0123456789abcdef\r\nstrict-transport-security: max-age=31536000\r\n"
    "CF-Cache-Status: DYNAMIC\r\nSet-Cookie: __cf_bm=abcdefghijklmnopqrstuvwxyz; path=/; HttpOnly; Secure\r\n"
    "X-Content-Type-Options: nosniff\r\nServer: cloudflare\r\nCF-RAY: 8f0123456789abcd-AMS\r\n"
    "alt-svc: h3=\":443\"; ma=86400\r\n\r\n" + kAnswer;

struct Arena {
    alignas(16) char buf[8192];
    std::pmr::monotonic_buffer_resource mono{buf, sizeof buf};
};

std::size_t touch(std::string_view a, std::string_view b) { return a.size() + b.size(); }

void OldRequest(benchmark::State& st, const std::string& wire) {
    Arena a;
    std::string body;
    body.reserve(4096);
    for (auto _ : st) {
        {
            http::request_parser<http::string_body, Alloc> p(std::piecewise_construct, std::make_tuple(),
                                                             std::make_tuple(Alloc(&a.mono)));
            p.get().body().swap(body);
            p.header_limit(16 * 1024);
            p.body_limit(32u << 20);
            boost::beast::error_code ec;
            std::size_t n = p.put(boost::asio::buffer(wire), ec);
            p.eager(true);
            n += p.put(boost::asio::buffer(wire.data() + n, wire.size() - n), ec);
            const auto& req = p.get();
            // head_of, as it was
            std::size_t x = req.count(http::field::transfer_encoding) + req.count(http::field::host);
            x += req[http::field::transfer_encoding].size();
            if (auto e = req.find(http::field::expect); e != req.end()) x += e->value().size();
            x += req.count("anthropic-version") + req.target().size() + req.method_string().size();
            x += req.keep_alive();
            for (const auto& f : req) x += touch(f.name_string(), f.value());
            benchmark::DoNotOptimize(x);
            p.get().body().swap(body);
            body.clear();
        }
        a.mono.release();
    }
}

void NewRequest(benchmark::State& st, const std::string& wire) {
    Arena a;
    std::string body;
    body.reserve(4096);
    for (auto _ : st) {
        {
            RequestParser p(&a.mono);
            p.body().swap(body);
            p.header_limit(16 * 1024);
            p.body_limit(32u << 20);
            boost::beast::error_code ec;
            std::size_t n = p.put(boost::asio::buffer(wire), ec);
            p.eager(true);
            n += p.put(boost::asio::buffer(wire.data() + n, wire.size() - n), ec);
            const auto h = head_of(p);
            std::size_t x = h.transfer_encoding_count + h.host_count + h.transfer_encoding.size() + h.expect.size() +
                            h.anthropic_client + h.target.size() + h.method.size();
            x += p.header_keep_alive();
            for (const auto& f : p.fields()) x += touch(f.name_string(), f.value());
            benchmark::DoNotOptimize(x);
            p.body().swap(body);
            body.clear();
        }
        a.mono.release();
    }
}

void OldResponse(benchmark::State& st, const std::string& wire) {
    Arena a;
    char piece[16 * 1024];
    for (auto _ : st) {
        {
            http::response_parser<http::buffer_body, Alloc> p(std::piecewise_construct, std::make_tuple(),
                                                               std::make_tuple(Alloc(&a.mono)));
            p.header_limit(64 * 1024);
            p.body_limit(boost::none);
            boost::beast::error_code ec;
            std::size_t n = p.put(boost::asio::buffer(wire), ec);
            const auto& uh = p.get();
            std::size_t x = uh[http::field::content_type].size() + uh[http::field::content_encoding].size();
            for (auto [it, end] = uh.equal_range(http::field::connection); it != end; ++it) x += it->value().size();
            for (const auto& f : uh) x += touch(f.name_string(), f.value());
            p.get().body().data = piece;
            p.get().body().size = sizeof piece;
            n += p.put(boost::asio::buffer(wire.data() + n, wire.size() - n), ec);
            x += n + p.keep_alive();
            benchmark::DoNotOptimize(x);
        }
        a.mono.release();
    }
}

void NewResponse(benchmark::State& st, const std::string& wire) {
    Arena a;
    char piece[16 * 1024];
    for (auto _ : st) {
        {
            ResponseParser p(&a.mono);
            p.header_limit(64 * 1024);
            p.body_limit(boost::none);
            boost::beast::error_code ec;
            std::size_t n = p.put(boost::asio::buffer(wire), ec);
            const auto& f = p.fields();
            std::size_t x = f[http::field::content_type].size() + f[http::field::content_encoding].size();
            for (const auto& c : f.equal_range(http::field::connection)) x += c.value().size();
            for (const auto& e : f) x += touch(e.name_string(), e.value());
            p.body().data = piece;
            p.body().size = sizeof piece;
            n += p.put(boost::asio::buffer(wire.data() + n, wire.size() - n), ec);
            x += n + p.keep_alive();
            benchmark::DoNotOptimize(x);
        }
        a.mono.release();
    }
}

BENCHMARK_CAPTURE(OldRequest, bench_peers, kBenchRequest);
BENCHMARK_CAPTURE(NewRequest, bench_peers, kBenchRequest);
BENCHMARK_CAPTURE(OldRequest, openai_sdk, kSdkRequest);
BENCHMARK_CAPTURE(NewRequest, openai_sdk, kSdkRequest);
BENCHMARK_CAPTURE(OldResponse, nginx, kNginxAnswer);
BENCHMARK_CAPTURE(NewResponse, nginx, kNginxAnswer);
BENCHMARK_CAPTURE(OldResponse, provider, kProviderAnswer);
BENCHMARK_CAPTURE(NewResponse, provider, kProviderAnswer);

}  // namespace

BENCHMARK_MAIN();
