#pragma once
// Plain data exchanged between the DNS responder, the policy compiler (which
// decides which names are allowed) and the agent (which writes admissions to
// redir_dns_allow and refusals to the audit log). Kept free of ldns and Asio
// so the agent can include it without either.
#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/cidr.hpp"

namespace redir::dns {

// 16 bytes, IPv4 as v4-mapped IPv6: the layout of struct redir_addr.
using Addr16 = redir::Addr;

// What the policy says about one name. Which of its addresses may be
// admitted (special ranges, DNS rebinding, allowed_ips, metadata) is not the
// responder's call: the Admitter decides with the compiled policy and the
// one special-address table (policy::CompiledPolicy::admit).
struct HostMatch {
    uint32_t portset_id = 0;  // stored with each admission (redir_dns_allow_val)
    bool deny = false;        // a deny rule matched: NXDOMAIN, nothing forwarded
};

// Everything the responder needs to know about the sandbox it serves.
struct SandboxView {
    bool inference_enabled = true;
    std::array<uint8_t, 4> vip4{198, 18, 0, 1};  // what inference.local resolves to
    std::optional<Addr16> vip6;                   // its AAAA; none: AAAA has no answer
    // Called with the name lower-cased and without the trailing dot, only for
    // names made of LDH labels (letters, digits, '-', '_'). nullopt: not
    // allowed (NXDOMAIN). Unset: nothing is allowed.
    std::function<std::optional<HostMatch>(std::string_view name)> match_host;
};

// One address the sandbox may now connect to, for ttl_seconds from now.
struct Admission {
    Addr16 addr{};
    uint32_t ttl_seconds = 0;
    bool operator==(const Admission&) const = default;
};

// Admission lifetime bounds. The floor keeps a connect() issued right after
// resolution from racing the expiry of an admission with TTL 0 or 1; the
// ceiling bounds how long one resolution keeps an address open after the
// name has moved. Answers forwarded to the sandbox have TTLs above the
// ceiling lowered to it, so a client cache never outlives its admission.
struct TtlLimits {
    uint32_t floor_seconds = 5;
    uint32_t ceiling_seconds = 3600;
};

// Why a query was answered the way it was; refusals are audit events.
enum class Verdict : uint8_t {
    inference,       // inference.local answered locally
    forwarded,       // resolved upstream
    denied,          // no allowing host rule, a deny rule, or not a host name: NXDOMAIN
    refused,         // class other than IN, or ANY/AXFR/IXFR/other meta types: REFUSED
    malformed,       // FORMERR, or NOTIMP for opcodes other than QUERY
    upstream_error,  // upstream timed out, unreachable or answered garbage: SERVFAIL
    overloaded,      // too many queries in flight: SERVFAIL
    quota,           // the sandbox holds its quota of DNS admissions: SERVFAIL
};
std::string_view to_string(Verdict v);

inline constexpr std::string_view kInferenceName = "inference.local";

}  // namespace redir::dns
