// libFuzzer target for the DNS responder's decision core: every input is
// tried both as a sandbox query and as an upstream answer. Besides memory
// errors (ASan/UBSan) it checks the properties the kernel relies on, so a
// logic slip that admits what it must not also counts as a crash.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <variant>

#include "dns/core.hpp"

namespace {

using namespace redir::dns;

Cidr v4(uint8_t a, uint8_t b, uint8_t len) {
    Cidr c;
    c.addr[10] = c.addr[11] = 0xff;
    c.addr[12] = a;
    c.addr[13] = b;
    c.len = static_cast<uint8_t>(96 + len);
    return c;
}

// www.example.com and *.cdn.example: any public address; internal.example.com:
// only 10.20/16 (and, mistakenly, link-local, which must still never pass).
const SandboxView& view() {
    static const SandboxView v = [] {
        SandboxView s;
        s.match_host = [](std::string_view n) -> std::optional<HostMatch> {
            if (n == "www.example.com") return HostMatch{1, false, {}};
            if (n == "internal.example.com") return HostMatch{2, false, {v4(10, 20, 16), v4(169, 254, 16)}};
            if (n == "evil.example.com") return HostMatch{3, true, {}};
            if (n.size() > 12 && n.substr(n.size() - 12) == ".cdn.example") return HostMatch{4, false, {}};
            return std::nullopt;
        };
        return s;
    }();
    return v;
}

[[noreturn]] void fail(const char* what) {
    std::fprintf(stderr, "dns_fuzz property violated: %s\n", what);
    std::abort();
}

void check_result(const Forward& f, const HostMatch& m, const UpstreamResult& r) {
    if (r.reply.size() < 12) fail("reply shorter than a header");
    if (message_id(r.reply) != f.client_id) fail("reply ID is not the client's");
    if (!r.ok && !r.admissions.empty()) fail("admissions from a rejected answer");
    for (const Admission& a : r.admissions) {
        if (is_link_local_address(a.addr)) fail("link-local admitted");
        if (m.deny) fail("admission under a deny match");
        if (m.allowed_ips.empty() && is_special_address(a.addr)) fail("special address admitted without allowed_ips");
        if (a.ttl_seconds < TtlLimits{}.floor_seconds || a.ttl_seconds > TtlLimits{}.ceiling_seconds)
            fail("TTL outside [floor, ceiling]");
    }
}

Forward fixed_forward(const char* name) {
    // A well-formed query built by the core itself, so answers can match it.
    std::vector<uint8_t> q = {0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0};
    std::string_view n(name);
    size_t start = 0;
    while (start <= n.size()) {
        size_t dot = n.find('.', start);
        if (dot == std::string_view::npos) dot = n.size();
        q.push_back(static_cast<uint8_t>(dot - start));
        q.insert(q.end(), n.begin() + start, n.begin() + dot);
        start = dot + 1;
    }
    q.insert(q.end(), {0, 0, 1, 0, 1});
    auto act = handle_query(q, view());
    if (!std::holds_alternative<Forward>(act)) fail("fixed query not forwarded");
    return std::get<Forward>(act);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::span<const uint8_t> in(data, size);

    QueryAction act = handle_query(in, view());
    if (const auto* r = std::get_if<Reply>(&act)) {
        if (r->wire.size() < 12) fail("reply shorter than a header");
        if (message_id(r->wire) != message_id(in)) fail("reply ID is not the query's");
        if (!(r->wire[2] & 0x80)) fail("reply without QR");
    } else if (const auto* f = std::get_if<Forward>(&act)) {
        if (f->match.deny) fail("denied name forwarded");
        if (f->name == kInferenceName) fail("inference.local forwarded");
        if (message_id(f->query) != 0) fail("forward query ID not zero");
        // Its own query echoed back is not an answer.
        UpstreamResult echo = process_upstream_answer(*f, f->query, f->match);
        if (echo.ok) fail("query accepted as its answer");
        check_result(*f, f->match, echo);
        check_result(*f, f->match, process_upstream_answer(*f, in, f->match));
        (void)answer_matches(*f, message_id(in), in);
        if (make_truncated(*f).size() < 12 || make_servfail(*f).size() < 12) fail("error reply too short");
    }

    static const Forward www = fixed_forward("www.example.com");
    static const Forward internal = fixed_forward("internal.example.com");
    for (const Forward* f : {&www, &internal}) {
        check_result(*f, f->match, process_upstream_answer(*f, in, f->match));
        (void)answer_matches(*f, message_id(in), in);
    }
    return 0;
}
