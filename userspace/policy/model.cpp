// Names of protocols and rule kinds, and port-list normalisation.
#include "policy/model.hpp"

#include <algorithm>

namespace redir::policy {

std::string_view to_string(Protocol p) {
    switch (p) {
    case Protocol::tcp: return "tcp";
    case Protocol::udp: return "udp";
    case Protocol::any: return "any";
    }
    return "?";
}

std::string_view to_string(RuleKind k) {
    switch (k) {
    case RuleKind::allow: return "allow";
    case RuleKind::deny: return "deny";
    case RuleKind::inspect: return "inspect";
    }
    return "?";
}

std::vector<PortRange> normalize_ports(std::vector<PortRange> ports) {
    std::sort(ports.begin(), ports.end(),
              [](const PortRange& a, const PortRange& b) { return a.lo < b.lo || (a.lo == b.lo && a.hi < b.hi); });
    std::vector<PortRange> out;
    for (const auto& r : ports) {
        if (!out.empty() && static_cast<uint32_t>(r.lo) <= static_cast<uint32_t>(out.back().hi) + 1) {
            out.back().hi = std::max(out.back().hi, r.hi);
        } else {
            out.push_back(r);
        }
    }
    return out;
}

}  // namespace redir::policy
