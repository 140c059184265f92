#pragma once
// Policy -> kernel map contents (bpf/include/redir/policy.h) plus the host
// rules the DNS responder needs. The semantics are in policy/README.md; the
// reference evaluator in tests/unit/policy checks this against them.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/error.hpp"
#include "policy/model.hpp"
#include "redir/policy.h"

namespace redir::policy {

// A policy that cannot be represented exactly (too many port ranges for one
// prefix); the message names the rule, as FILE:LINE:COL: PATH: message.
class CompileError : public redir::Error {
public:
    using redir::Error::Error;
};

struct LpmEntry {
    redir_lpm_key key;
    redir_lpm_val val;
};

struct PortsetEntry {
    redir_portset_key key;
    redir_portset set;
};

struct HostRule {
    std::string pattern;  // "api.github.com" or "*.pythonhosted.org"
    bool is_wildcard = false;
    bool is_deny = false;
    bool is_inspect = false;
    // The rule's own ports. For deny rules the ranges mark denied ports
    // (verdict ALLOW = "in the set", the convention of deny_portset_id).
    uint32_t portset_id = 0;
    std::vector<Cidr> allowed_ips;
    std::vector<PortRange> ports;  // normalised; empty = all
    Protocol protocol = Protocol::tcp;
    SourceLoc loc;
};

struct HostMatch {
    std::string pattern;          // the most specific matching pattern
    std::vector<uint32_t> rules;  // indices into host_rules of every rule matching the name
};

struct CompiledPolicy {
    uint32_t policy_id = 0;
    bool inference_enabled = true;
    // Write all of these (keys carry policy_id) before flipping the attachment.
    std::vector<LpmEntry> lpm;
    // Port set ids are 1..portsets.size(), portsets[id - 1] has that id.
    std::vector<PortsetEntry> portsets;
    std::vector<HostRule> host_rules;

    // Which host rules apply to NAME (case-insensitive, trailing dot ignored).
    // nullopt means the name is not allowed at all: answer NXDOMAIN. Deny
    // rules win; "*.suffix" matches names below suffix, not suffix itself.
    std::optional<HostMatch> match_host(std::string_view name) const;

    // Port set to store in redir_dns_allow for an address the name resolved
    // to, or nullopt if this address must not be admitted: link-local, a
    // special address not listed in a matching rule's allowed_ips (DNS
    // rebinding), an address outside allowed_ips, or no ports left after deny.
    std::optional<uint32_t> admit(const HostMatch& m, const Addr& addr) const;
    std::optional<uint32_t> admit(std::string_view name, const Addr& addr) const;

    const redir_portset* portset(uint32_t id) const {
        return id >= 1 && id <= portsets.size() ? &portsets[id - 1].set : nullptr;
    }

    // Internal lookup tables (filled by compile()).
    struct HostKey {
        std::vector<uint32_t> rules;
        bool nxdomain = false;
    };
    std::unordered_map<std::string, HostKey> host_keys;        // pattern -> rules matching names it covers
    std::unordered_map<std::string, uint32_t> portset_index;  // serialised ranges -> id
};

// Throws CompileError. Deterministic: the same policy gives the same entries.
CompiledPolicy compile(const Policy& p, uint32_t policy_id);

}  // namespace redir::policy
