// libFuzzer target for the terminator's request path, header bytes to routing
// decision: the byte-level lint, the gateway's header parser (Beast's
// basic_parser with flat fields, flat_fields.hpp) with its limits, and
// decide_route(). Besides memory errors (ASan/UBSan) it checks
// what the gateway relies on: a routed request names a served endpoint with
// the right method, no refusal carries unbounded client text, and framing
// that could smuggle a second request is never routed.
#include <boost/beast/core/buffers_range.hpp>
#include <boost/beast/http.hpp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory_resource>
#include <string_view>

#include "terminator/head.hpp"
#include "terminator/request.hpp"

namespace {

namespace http = boost::beast::http;
using namespace redir::terminator;

constexpr std::size_t kHeaderLimit = 16 * 1024;
constexpr std::size_t kLogMax = 256;

[[noreturn]] void fail(const char* what) {
    std::fprintf(stderr, "property violated: %s\n", what);
    std::abort();
}

bool iequal(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i])))
            return false;
    return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view bytes(reinterpret_cast<const char*>(data), size);
    std::size_t end = 0;
    if (lint_header(bytes, end) != HeaderLint::Complete) return 0;
    if (end > bytes.size() || end < 4 || bytes.substr(end - 4, 4) != "\r\n\r\n") fail("lint end is not a blank line");
    if (end > kHeaderLimit) return 0;  // 431 before any parser

    std::pmr::monotonic_buffer_resource arena;  // the connection's RequestArena in the gateway
    RequestParser p(&arena);
    p.header_limit(static_cast<std::uint32_t>(kHeaderLimit));
    p.body_limit(32ull * 1024 * 1024);
    p.eager(false);
    boost::beast::error_code ec;
    p.put(boost::asio::buffer(bytes.data(), end), ec);
    if (ec || !p.is_header_done()) return 0;  // 400 / 413 / 431
    auto head = head_of(p);
    auto d = decide_route(head, kLogMax);

    // Refusals quote client text only clipped: bounded whatever came in.
    if (d.message.size() > 2 * kLogMax + 400) fail("refusal message longer than the clipped parts allow");
    if (d.framing_status && d.route_status) fail("both a framing and a route refusal");
    if (d.framing_status) return 0;

    // Routed framing is unambiguous: at most one Transfer-Encoding, exactly
    // "chunked"; one Host on HTTP/1.1; Expect only 100-continue.
    if (head.transfer_encoding_count > 1) fail("several Transfer-Encoding headers routed");
    if (head.transfer_encoding_count == 1) {
        auto te = head.transfer_encoding;
        while (!te.empty() && (te.front() == ' ' || te.front() == '\t')) te.remove_prefix(1);
        while (!te.empty() && (te.back() == ' ' || te.back() == '\t')) te.remove_suffix(1);
        if (!iequal(te, "chunked")) fail("a Transfer-Encoding other than chunked routed");
    }
    if (head.version == 11 && head.host_count != 1) fail("HTTP/1.1 without exactly one Host routed");
    if (d.expect_continue != head.has_expect) fail("Expect not 100-continue routed");

    if (d.route_status) return 0;
    if (!d.endpoint) fail("routed without an endpoint");
    const bool is_get = *d.endpoint == Endpoint::Models || *d.endpoint == Endpoint::ModelById;
    if (head.method != (is_get ? "GET" : "POST")) fail("method does not match the endpoint");
    // The route is a function of the normalised path alone.
    std::string again;
    if (match_route(d.path, &again) != d.endpoint) fail("route differs on the normalised path");
    if (d.path.empty() || d.path.front() != '/') fail("routed path is not absolute");
    if (d.path.find("//") != std::string::npos) fail("routed path keeps an empty segment");
    return 0;
}
