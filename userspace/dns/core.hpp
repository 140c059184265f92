#pragma once
// The responder's decisions, without sockets: what to do with one query from
// a sandbox and what an upstream answer admits. Every input is untrusted wire
// data (the sandbox and the upstream both); ldns does the parsing.
#include <cstdint>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "dns/types.hpp"

namespace redir::dns {

inline constexpr uint32_t kInferenceTtl = 60;

// Answer the sandbox now.
struct Reply {
    std::vector<uint8_t> wire;
    Verdict verdict = Verdict::malformed;
    std::string name;  // lower-case presentation form, "" if unparseable
    uint16_t qtype = 0;
};

// Resolve upstream. `query` is a fresh query (question, RD/CD/AD, the
// client's EDNS size and DO bit; no client EDNS options, no other sections)
// with ID 0: the sender puts a fresh random ID in it.
struct Forward {
    std::vector<uint8_t> query;
    std::string name;  // lower-case, no trailing dot; what match_host saw
    uint16_t qtype = 0;
    HostMatch match;
    uint16_t client_id = 0;
    // Largest UDP reply the client accepts (512 without EDNS); a bigger
    // answer goes back truncated so the client retries over TCP.
    uint16_t client_udp_size = 512;
};

// Nothing is sent back: too short to carry an ID, or a response (QR set),
// which a resolver never receives as a query and must not reflect.
struct Drop {};

using QueryAction = std::variant<Reply, Forward, Drop>;

// inference.local: A -> view.vip4, AAAA -> view.vip6 when set (TTL
// kInferenceTtl) when inference is enabled; every other type (and AAAA
// without vip6) -> NOERROR with no answer, so AAAA lookups fall back to A.
// Disabled -> NXDOMAIN.
// Other names: view.match_host decides; allowed -> Forward, else NXDOMAIN.
// Malformed -> FORMERR; opcode != QUERY -> NOTIMP; class != IN or qtype
// ANY/AXFR/IXFR/meta -> REFUSED.
QueryAction handle_query(std::span<const uint8_t> wire, const SandboxView& view);

struct UpstreamResult {
    std::vector<uint8_t> reply;  // for the client: its ID, TTLs capped at the ceiling
    std::vector<Admission> admissions;
    bool ok = false;  // false: `reply` is a SERVFAIL built from the query
};

// Admits every A/AAAA in the answer section whose owner is the question name
// or reachable from it through CNAMEs in that section, with the smallest TTL
// along the chain clamped to `ttl`. Records of other owners are ignored: an
// upstream cannot admit addresses for names the sandbox did not ask about.
// These are candidates: the Admitter decides each one with the compiled
// policy (special ranges, rebinding, metadata). A deny match admits nothing.
// `match` is normally fwd.match; the server passes the current policy's so a
// reload during the lookup counts.
UpstreamResult process_upstream_answer(const Forward& fwd, std::span<const uint8_t> answer,
                                       const HostMatch& match, const TtlLimits& ttl = {});

// True if `answer` is a response with this ID whose question is the one in
// fwd.query (name compared case-insensitively, type and class equal). What
// the forwarder checks before accepting a datagram as the upstream's answer.
bool answer_matches(const Forward& fwd, uint16_t upstream_id, std::span<const uint8_t> answer);

// Replies built from a Forward for the client: question echoed, client's ID,
// OPT if the client sent one. rcode is the 4-bit header RCODE.
std::vector<uint8_t> make_error_reply(const Forward& fwd, uint8_t rcode);
inline constexpr uint8_t kServfail = 2;
inline constexpr uint8_t kNxdomain = 3;
std::vector<uint8_t> make_servfail(const Forward& fwd);
// Header and question only, TC set: the answer did not fit client_udp_size.
std::vector<uint8_t> make_truncated(const Forward& fwd);

// clamp(ttl, floor, ceiling)
uint32_t clamp_ttl(uint32_t ttl, const TtlLimits& limits);

// Sets the ID (first two bytes) of a DNS message in place; no-op if shorter.
void set_message_id(std::span<uint8_t> wire, uint16_t id);
uint16_t message_id(std::span<const uint8_t> wire);

}  // namespace redir::dns
