#pragma once
// The policy language as loaded: what a policy file says after validation and
// normalisation (host names lower-cased, ports merged and sorted, CIDRs
// canonical). policy/README.md is the user-facing description.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/cidr.hpp"
#include "common/special.hpp"

namespace redir::policy {

// Addresses and prefixes are the common ones (common/cidr.hpp): 16 bytes,
// IPv4 as v4-mapped IPv6, the layout of the kernel maps.
using redir::Addr;
using redir::addr_to_string;
using redir::Cidr;
using redir::CidrParse;
using redir::parse_addr;
using redir::parse_cidr;
using redir::v4_mapped;

enum class Protocol : uint8_t { tcp, udp, any };
std::string_view to_string(Protocol p);

struct PortRange {
    uint16_t lo = 0;  // inclusive
    uint16_t hi = 0;  // inclusive
    bool operator==(const PortRange&) const = default;
};

// Sorted, disjoint, non-adjacent ranges (adjacent ones are merged).
std::vector<PortRange> normalize_ports(std::vector<PortRange> ports);

struct SourceLoc {
    uint32_t line = 0;  // 1-based; 0 = not from a file
    uint32_t col = 0;
    std::string path;   // JSON path of the entry, e.g. "allow[2]"
};

enum class RuleKind : uint8_t { allow, deny, inspect };
std::string_view to_string(RuleKind k);

struct Rule {
    std::string host;          // exact name or "*.suffix", lower-case; empty for cidr rules
    std::optional<Cidr> cidr;  // exactly one of host / cidr
    std::vector<PortRange> ports;  // normalised; empty = all ports (1-65535)
    Protocol protocol = Protocol::tcp;
    std::vector<Cidr> allowed_ips;  // host rules only; empty = any non-special address
    std::string comment;
    SourceLoc loc;

    bool is_host() const { return !host.empty(); }
    bool is_wildcard() const { return host.size() > 2 && host[0] == '*' && host[1] == '.'; }
};

struct Policy {
    int version = 1;
    std::string name;
    std::string comment;
    bool inference_enabled = true;
    // inference.provider_fetch: the provider may reach the network for the
    // sandbox (MCP servers, web search/fetch tools, inputs given by URL).
    bool inference_provider_fetch = false;
    // inference.route: which inference route (provider + model) serves it.
    std::string inference_route = "default";
    // inference.limits, counted per sandbox; 0 = no limit.
    uint64_t inference_requests_per_minute = 0;
    uint64_t inference_tokens_per_day = 0;
    std::vector<Rule> allow;
    std::vector<Rule> deny;
    std::vector<Rule> inspect;  // like allow, but TCP connections go through the inspecting relay
    std::string source;         // file name it was parsed from (for messages), not serialised
};

// The special-address table (common/special.hpp) is the policy's too: a
// cidr rule counts for an address only inside the innermost special range
// containing it; never-reachable addresses are never admitted.
using redir::AddrClass;
using redir::innermost_special;
using redir::is_loopback;
using redir::is_never_reachable;
using redir::is_special;
using redir::special_ranges;
using redir::SpecialRange;

}  // namespace redir::policy
