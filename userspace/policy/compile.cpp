#include "policy/compile.hpp"

#include <algorithm>
#include <cstring>

namespace redir::policy {

namespace {

// Port sets per protocol, each sorted, disjoint and merged.
struct Ports {
    std::vector<PortRange> p[2];  // [0] tcp, [1] udp
    bool empty() const { return p[0].empty() && p[1].empty(); }
    bool operator==(const Ports&) const = default;
};

std::vector<PortRange> unite(const std::vector<PortRange>& a, const std::vector<PortRange>& b) {
    if (b.empty()) return a;
    if (a.empty()) return b;
    std::vector<PortRange> all;
    all.reserve(a.size() + b.size());
    std::merge(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(all),
               [](const PortRange& x, const PortRange& y) { return x.lo < y.lo; });
    std::vector<PortRange> out;
    for (const auto& r : all) {
        if (!out.empty() && uint32_t(r.lo) <= uint32_t(out.back().hi) + 1) {
            out.back().hi = std::max(out.back().hi, r.hi);
        } else {
            out.push_back(r);
        }
    }
    return out;
}

std::vector<PortRange> subtract(const std::vector<PortRange>& a, const std::vector<PortRange>& b) {
    if (a.empty() || b.empty()) return a;
    std::vector<PortRange> out;
    size_t j = 0;
    for (auto r : a) {
        uint32_t lo = r.lo, hi = r.hi;
        while (j < b.size() && b[j].hi < lo) ++j;
        size_t k = j;
        while (lo <= hi && k < b.size() && b[k].lo <= hi) {
            if (b[k].lo > lo) out.push_back({uint16_t(lo), uint16_t(b[k].lo - 1)});
            lo = uint32_t(b[k].hi) + 1;
            ++k;
        }
        if (lo <= hi) out.push_back({uint16_t(lo), uint16_t(hi)});
    }
    return out;
}

void add_rule(Ports& into, const Rule& r) {
    static const std::vector<PortRange> all = {{1, 65535}};
    const auto& ports = r.ports.empty() ? all : r.ports;
    if (r.protocol != Protocol::udp) into.p[0] = unite(into.p[0], ports);
    if (r.protocol != Protocol::tcp) into.p[1] = unite(into.p[1], ports);
}

constexpr uint8_t kProto[2] = {REDIR_PROTO_TCP, REDIR_PROTO_UDP};

// What the kernel stores: inspect beats allow, deny beats both.
std::vector<redir_port_range> effective(const Ports& allow, const Ports& inspect, const Ports& deny) {
    std::vector<redir_port_range> out;
    for (int i = 0; i < 2; ++i) {
        auto ins = subtract(inspect.p[i], deny.p[i]);
        auto alw = subtract(subtract(allow.p[i], inspect.p[i]), deny.p[i]);
        size_t a = 0, b = 0;
        while (a < alw.size() || b < ins.size()) {
            bool take_ins = a == alw.size() || (b < ins.size() && ins[b].lo < alw[a].lo);
            const PortRange& r = take_ins ? ins[b++] : alw[a++];
            redir_port_range pr{};
            pr.lo = r.lo;
            pr.hi = r.hi;
            pr.proto = kProto[i];
            pr.verdict = take_ins ? REDIR_VERDICT_REDIRECT : REDIR_VERDICT_ALLOW;
            out.push_back(pr);
        }
    }
    return out;
}

// Deny sets mark members with a non-DENY verdict: the kernel asks
// "portset_verdict(deny set) != DENY" to mean "this port is denied".
std::vector<redir_port_range> membership(const Ports& deny) {
    std::vector<redir_port_range> out;
    for (int i = 0; i < 2; ++i) {
        for (const auto& r : deny.p[i]) {
            redir_port_range pr{};
            pr.lo = r.lo;
            pr.hi = r.hi;
            pr.proto = kProto[i];
            pr.verdict = REDIR_VERDICT_ALLOW;
            out.push_back(pr);
        }
    }
    return out;
}

std::string where(const Policy& p, const SourceLoc& loc) {
    std::string src = p.source.empty() ? "policy " + p.name : p.source;
    if (loc.line == 0) return src + ": " + (loc.path.empty() ? "" : loc.path + ": ");  // built in code, not parsed
    return src + ":" + std::to_string(loc.line) + ":" + std::to_string(loc.col) + ": " + loc.path + ": ";
}

class Compiler {
public:
    Compiler(const Policy& p, uint32_t id) : p_(p) {
        out_.policy_id = id;
        out_.inference_enabled = p.inference_enabled;
    }

    CompiledPolicy run() {
        cidrs();
        hosts();
        return std::move(out_);
    }

private:
    uint32_t intern(const std::vector<redir_port_range>& ranges, const std::string& blame) {
        if (ranges.size() > REDIR_MAX_PORT_RANGES) {
            throw CompileError(blame + "needs " + std::to_string(ranges.size()) +
                               " port ranges after combining the rules that apply; the limit is " +
                               std::to_string(REDIR_MAX_PORT_RANGES) + " (merge or simplify the port lists)");
        }
        std::string key(reinterpret_cast<const char*>(ranges.data()), ranges.size() * sizeof(redir_port_range));
        auto [it, inserted] = out_.portset_index.emplace(std::move(key), 0);
        if (!inserted) return it->second;
        if (out_.portsets.size() >= REDIR_MAX_PORTSETS) {
            throw CompileError(blame + "would be distinct port set number " +
                               std::to_string(REDIR_MAX_PORTSETS + 1) + "; the limit is " +
                               std::to_string(REDIR_MAX_PORTSETS) + " per policy (use fewer distinct port lists)");
        }
        PortsetEntry e{};
        e.key.policy_id = out_.policy_id;
        e.key.portset_id = static_cast<uint32_t>(out_.portsets.size() + 1);
        e.set.count = static_cast<uint32_t>(ranges.size());
        std::copy(ranges.begin(), ranges.end(), e.set.r);
        out_.portsets.push_back(e);
        it->second = e.key.portset_id;
        return it->second;
    }

    // ---- cidr rules -> LPM entries -------------------------------------
    //
    // Every rule cidr and every special range is a node. Sorted by (address,
    // length), the nodes come in trie pre-order, so a stack holds exactly the
    // chain of nodes covering the current one. An address's longest match is
    // some node N, and the rules covering the address are exactly those
    // covering N (a longer covering rule would itself be a longer match), so
    // N's entry can hold the final answer. Allow/inspect rules only count
    // from the innermost special range inward; deny rules always count.

    struct Item {
        Cidr c;
        const Rule* rule;  // nullptr: a special range
        RuleKind kind;
    };

    struct Frame {
        Cidr c;
        Ports allow, inspect, deny;
        std::vector<redir_port_range> eff, den;  // what an address matching here gets
    };

    void cidrs() {
        std::vector<Item> items;
        auto add = [&](const std::vector<Rule>& rules, RuleKind k) {
            for (const auto& r : rules) {
                if (r.cidr) items.push_back({*r.cidr, &r, k});
            }
        };
        add(p_.allow, RuleKind::allow);
        add(p_.inspect, RuleKind::inspect);
        add(p_.deny, RuleKind::deny);
        for (const auto& s : special_ranges()) items.push_back({s.cidr, nullptr, RuleKind::allow});
        std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
            int c = std::memcmp(a.c.addr.data(), b.c.addr.data(), 16);
            return c < 0 || (c == 0 && a.c.len < b.c.len);
        });

        std::vector<Frame> stack;
        stack.reserve(130);
        out_.lpm.reserve(items.size());
        for (size_t i = 0; i < items.size();) {
            size_t j = i;
            bool special = false;
            const Rule* blame = nullptr;
            while (j < items.size() && items[j].c.len == items[i].c.len && items[j].c.addr == items[i].c.addr) {
                if (!items[j].rule) special = true;
                if (!blame) blame = items[j].rule;
                ++j;
            }
            const Cidr& c = items[i].c;
            while (!stack.empty() && !stack.back().c.contains(c)) stack.pop_back();

            Frame f;
            f.c = c;
            if (!stack.empty()) {
                f.deny = stack.back().deny;
                if (!special) {
                    f.allow = stack.back().allow;
                    f.inspect = stack.back().inspect;
                }
            }
            for (size_t k = i; k < j; ++k) {
                if (!items[k].rule) continue;
                Ports& into = items[k].kind == RuleKind::deny      ? f.deny
                              : items[k].kind == RuleKind::inspect ? f.inspect
                                                                   : f.allow;
                add_rule(into, *items[k].rule);
            }
            f.eff = effective(f.allow, f.inspect, f.deny);
            f.den = membership(f.deny);

            // Same answer as the enclosing match (or as no match at all): the
            // entry would change nothing.
            bool redundant = stack.empty() ? (f.eff.empty() && f.den.empty())
                                           : (same(f.eff, stack.back().eff) && same(f.den, stack.back().den));
            if (!redundant) emit(f, blame);
            stack.push_back(std::move(f));
            i = j;
        }
    }

    static bool same(const std::vector<redir_port_range>& a, const std::vector<redir_port_range>& b) {
        return a.size() == b.size() &&
               (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(redir_port_range)) == 0);
    }

    void emit(const Frame& f, const Rule* blame) {
        std::string who = blame ? where(p_, blame->loc) + "port set for " + f.c.to_string() + " "
                                : p_.source + ": port set for special range " + f.c.to_string() + " ";
        LpmEntry e{};
        e.key.prefixlen = 32 + f.c.len;
        e.key.policy_id = out_.policy_id;
        std::memcpy(e.key.addr, f.c.addr.data(), 16);
        e.val.portset_id = intern(f.eff, who);
        if (!f.den.empty()) {
            e.val.flags = REDIR_LPM_F_HAS_DENY;
            e.val.deny_portset_id = intern(f.den, who + "(deny) ");
        }
        out_.lpm.push_back(e);
    }

    // ---- host rules -------------------------------------------------------

    void hosts() {
        auto add = [&](const std::vector<Rule>& rules, RuleKind k) {
            for (const auto& r : rules) {
                if (!r.is_host()) continue;
                HostRule h;
                h.pattern = r.host;
                h.is_wildcard = r.is_wildcard();
                h.is_deny = k == RuleKind::deny;
                h.is_inspect = k == RuleKind::inspect;
                h.allowed_ips = r.allowed_ips;
                h.ports = r.ports;
                h.protocol = r.protocol;
                h.loc = r.loc;
                Ports ps;
                add_rule(ps, r);
                h.portset_id = intern(h.is_deny ? membership(ps)
                                                : effective(h.is_inspect ? Ports{} : ps, h.is_inspect ? ps : Ports{},
                                                            Ports{}),
                                      where(p_, r.loc));
                out_.host_rules.push_back(std::move(h));
                rules_src_.push_back(&r);
            }
        };
        add(p_.allow, RuleKind::allow);
        add(p_.inspect, RuleKind::inspect);
        add(p_.deny, RuleKind::deny);

        std::unordered_map<std::string, std::vector<uint32_t>> exact, wild;  // wild keyed by suffix
        for (uint32_t i = 0; i < out_.host_rules.size(); ++i) {
            const auto& h = out_.host_rules[i];
            if (h.is_wildcard) {
                wild[h.pattern.substr(2)].push_back(i);
            } else {
                exact[h.pattern].push_back(i);
            }
        }
        auto add_wild = [&](const std::string& suffix, std::vector<uint32_t>& into) {
            if (auto it = wild.find(suffix); it != wild.end()) into.insert(into.end(), it->second.begin(), it->second.end());
        };
        // Wildcards "*.S" for every proper suffix S of NAME.
        auto wildcards_above = [&](const std::string& name, std::vector<uint32_t>& into) {
            for (size_t dot = name.find('.'); dot != std::string::npos; dot = name.find('.', dot + 1)) {
                add_wild(name.substr(dot + 1), into);
            }
        };
        for (const auto& [name, idx] : exact) {
            CompiledPolicy::HostKey k;
            k.rules = idx;
            wildcards_above(name, k.rules);
            finish_key(name, k);
        }
        for (const auto& [suffix, idx] : wild) {
            CompiledPolicy::HostKey k;
            add_wild(suffix, k.rules);
            wildcards_above(suffix, k.rules);
            finish_key("*." + suffix, k);
        }
    }

    // Precompute every port set admit() can ask for, so the DNS responder
    // never needs one that is not in the map. Which allow rules admit an
    // address depends only on whether it is special and on the innermost of
    // the rules' allowed_ips prefixes containing it (prefixes nest or are
    // disjoint), so a handful of cases covers every address.
    void finish_key(const std::string& pattern, CompiledPolicy::HostKey& k) {
        std::sort(k.rules.begin(), k.rules.end());
        Ports deny, all_allow;
        std::vector<Cidr> cuts;
        for (uint32_t i : k.rules) {
            const Rule& r = *rules_src_[i];
            if (out_.host_rules[i].is_deny) {
                add_rule(deny, r);
            } else {
                add_rule(all_allow, r);
                cuts.insert(cuts.end(), r.allowed_ips.begin(), r.allowed_ips.end());
            }
        }
        k.nxdomain = effective(all_allow, Ports{}, deny).empty();
        if (!k.nxdomain) {
            const std::string blame = where(p_, rules_src_[k.rules.front()]->loc) + "names matching " + pattern + " ";
            for (int special = 0; special < 2; ++special) {
                for (size_t c = 0; c <= cuts.size(); ++c) {
                    Ports allow, inspect;
                    for (uint32_t i : k.rules) {
                        const Rule& r = *rules_src_[i];
                        const HostRule& h = out_.host_rules[i];
                        if (h.is_deny) continue;
                        bool admits = r.allowed_ips.empty()
                                          ? !special
                                          : c < cuts.size() && std::any_of(r.allowed_ips.begin(), r.allowed_ips.end(),
                                                                           [&](const Cidr& x) { return x.contains(cuts[c]); });
                        if (admits) add_rule(h.is_inspect ? inspect : allow, r);
                    }
                    auto eff = effective(allow, inspect, deny);
                    if (!eff.empty()) intern(eff, blame);
                }
            }
        }
        out_.host_keys.emplace(pattern, std::move(k));
    }

    const Policy& p_;
    CompiledPolicy out_;
    std::vector<const Rule*> rules_src_;  // parallel to out_.host_rules
};

}  // namespace

CompiledPolicy compile(const Policy& p, uint32_t policy_id) { return Compiler(p, policy_id).run(); }

std::optional<HostMatch> CompiledPolicy::match_host(std::string_view name) const {
    std::string n(name);
    if (!n.empty() && n.back() == '.') n.pop_back();
    for (auto& ch : n) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (n.empty()) return std::nullopt;

    auto found = host_keys.find(n);
    std::string pattern = n;
    if (found == host_keys.end()) {
        for (size_t dot = n.find('.'); dot != std::string::npos; dot = n.find('.', dot + 1)) {
            pattern = "*." + n.substr(dot + 1);
            found = host_keys.find(pattern);
            if (found != host_keys.end()) break;
        }
    }
    if (found == host_keys.end() || found->second.nxdomain) return std::nullopt;
    return HostMatch{pattern, found->second.rules};
}

std::optional<uint32_t> CompiledPolicy::admit(const HostMatch& m, const Addr& addr) const {
    // Metadata never; the node's loopback only through a cidr rule, never a name.
    if (is_never_reachable(addr) || is_loopback(addr)) return std::nullopt;
    bool special = is_special(addr);
    Ports allow, inspect, deny;
    for (uint32_t i : m.rules) {
        const HostRule& h = host_rules.at(i);
        Rule r;
        r.ports = h.ports;
        r.protocol = h.protocol;
        if (h.is_deny) {
            add_rule(deny, r);
            continue;
        }
        bool admits = h.allowed_ips.empty() ? !special
                                            : std::any_of(h.allowed_ips.begin(), h.allowed_ips.end(),
                                                          [&](const Cidr& c) { return c.contains(addr); });
        if (admits) add_rule(h.is_inspect ? inspect : allow, r);
    }
    auto eff = effective(allow, inspect, deny);
    if (eff.empty()) return std::nullopt;
    std::string key(reinterpret_cast<const char*>(eff.data()), eff.size() * sizeof(redir_port_range));
    auto it = portset_index.find(key);
    if (it == portset_index.end()) return std::nullopt;  // cannot happen: compile() precomputes every case
    return it->second;
}

std::optional<uint32_t> CompiledPolicy::admit(std::string_view name, const Addr& addr) const {
    auto m = match_host(name);
    if (!m) return std::nullopt;
    return admit(*m, addr);
}

}  // namespace redir::policy
