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

namespace redir::policy {

// Every address is 16 bytes, IPv4 as v4-mapped IPv6 (::ffff:a.b.c.d), the same
// layout the kernel maps use.
using Addr = std::array<uint8_t, 16>;

// A prefix in the 128-bit space. For IPv4, `addr` is v4-mapped and `len` is
// 96 + the IPv4 prefix length, so one containment test serves both families.
struct Cidr {
    Addr addr{};
    uint8_t len = 0;  // 0..128, host bits always zero
    bool v4 = false;  // written (and shown) as IPv4

    // Canonical text: "10.0.0.0/8", "2001:db8::/32".
    std::string to_string() const;
    bool contains(const Addr& a) const;
    bool contains(const Cidr& inner) const { return inner.len >= len && contains(inner.addr); }
    bool operator==(const Cidr&) const = default;
};

// Parses "a.b.c.d/n", "x:y::/n", or a bare address (a host route). Returns an
// error message (without location) on failure; host bits set is an error that
// names the canonical prefix. A v6 prefix inside ::ffff:0:0/96 becomes IPv4.
struct CidrParse {
    std::optional<Cidr> cidr;
    std::string error;
};
CidrParse parse_cidr(std::string_view text);

std::optional<Addr> parse_addr(std::string_view text);  // v4 returned v4-mapped
std::string addr_to_string(const Addr& a);               // v4-mapped shown as v4
Addr v4_mapped(uint32_t host_order_v4);

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
    std::vector<Rule> allow;
    std::vector<Rule> deny;
    std::vector<Rule> inspect;  // like allow, but TCP connections go through the inspecting relay
    std::string source;         // file name it was parsed from (for messages), not serialised
};

// Special address ranges (INTERFACE.md): reachable only through a rule whose
// cidr lies inside the innermost special range containing the destination.
struct SpecialRange {
    Cidr cidr;
    std::string_view what;
    bool link_local;  // never reachable; rules inside it are rejected
};
const std::vector<SpecialRange>& special_ranges();
// Innermost special range containing `a`, or nullptr.
const SpecialRange* innermost_special(const Addr& a);
bool is_special(const Addr& a);
bool is_link_local(const Addr& a);

}  // namespace redir::policy
