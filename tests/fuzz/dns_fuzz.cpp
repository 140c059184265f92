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

// Which resolved addresses are admitted (special ranges, rebinding,
// metadata) is decided by policy::CompiledPolicy::admit with the common
// special-address table, tested in tests/unit/policy; here the core's own
// properties: only answers to the question, only allowed names, sane TTLs.
const SandboxView& view() {
    static const SandboxView v = [] {
        SandboxView s;
        s.match_host = [](std::string_view n) -> std::optional<HostMatch> {
            if (n == "www.example.com") return HostMatch{1, false};
            if (n == "internal.example.com") return HostMatch{2, false};
            if (n == "evil.example.com") return HostMatch{3, true};
            if (n.size() > 12 && n.substr(n.size() - 12) == ".cdn.example") return HostMatch{4, false};
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
        if (m.deny) fail("admission under a deny match");
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
