#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>

#include "policy/compile.hpp"
#include "random_cidr.hpp"
#include "policy/parse.hpp"
#include "policy_reference.hpp"

using namespace redir::policy;
using namespace redir::testsupport::policyref;

namespace {

Policy load(const std::string& text) {
    auto r = parse_policy(text, "t.json");
    EXPECT_TRUE(r.ok()) << r.error_text();
    return r.policy.value_or(Policy{});
}

Addr ip(const char* s) { return *parse_addr(s); }

// ---- the kernel, simulated over the compiled entries ----

bool lpm_match(const redir_lpm_key& k, uint32_t policy_id, const Addr& a) {
    if (k.policy_id != policy_id) return false;
    Cidr c;
    std::memcpy(c.addr.data(), k.addr, 16);
    c.len = static_cast<uint8_t>(k.prefixlen - 32);
    return c.contains(a);
}

const redir_lpm_val* lpm_lookup(const CompiledPolicy& cp, const Addr& a) {
    const LpmEntry* best = nullptr;
    for (const auto& e : cp.lpm) {
        if (lpm_match(e.key, cp.policy_id, a) && (!best || e.key.prefixlen > best->key.prefixlen)) best = &e;
    }
    return best ? &best->val : nullptr;
}

uint8_t portset_verdict(const CompiledPolicy& cp, uint32_t id, uint16_t port, uint8_t proto) {
    const redir_portset* ps = cp.portset(id);
    if (!ps) return REDIR_VERDICT_DENY;
    for (uint32_t i = 0; i < ps->count; ++i) {
        const auto& r = ps->r[i];
        if (r.proto == proto && port >= r.lo && port <= r.hi) return r.verdict;
    }
    return REDIR_VERDICT_DENY;
}

uint8_t kernel(const CompiledPolicy& cp, const Addr& a, uint16_t port, uint8_t proto) {
    if (is_never_reachable(a)) return REDIR_VERDICT_DENY;
    const redir_lpm_val* v = lpm_lookup(cp, a);
    return v ? portset_verdict(cp, v->portset_id, port, proto) : uint8_t{REDIR_VERDICT_DENY};
}

bool kernel_denied(const CompiledPolicy& cp, const Addr& a, uint16_t port, uint8_t proto) {
    const redir_lpm_val* v = lpm_lookup(cp, a);
    return v && (v->flags & REDIR_LPM_F_HAS_DENY) &&
           portset_verdict(cp, v->deny_portset_id, port, proto) != REDIR_VERDICT_DENY;
}

void check_portsets_well_formed(const CompiledPolicy& cp) {
    for (size_t i = 0; i < cp.portsets.size(); ++i) {
        const auto& e = cp.portsets[i];
        ASSERT_EQ(e.key.portset_id, i + 1);
        ASSERT_EQ(e.key.policy_id, cp.policy_id);
        ASSERT_LE(e.set.count, REDIR_MAX_PORT_RANGES);
        for (uint32_t j = 1; j < e.set.count; ++j) {
            const auto& a = e.set.r[j - 1];
            const auto& b = e.set.r[j];
            ASSERT_TRUE(a.proto < b.proto || (a.proto == b.proto && a.hi < b.lo)) << "unsorted/overlapping set";
        }
    }
    for (const auto& e : cp.lpm) {
        ASSERT_NE(cp.portset(e.val.portset_id), nullptr);
        if (e.val.flags & REDIR_LPM_F_HAS_DENY) {
            ASSERT_NE(cp.portset(e.val.deny_portset_id), nullptr);
        }
    }
}

constexpr uint8_t TCP = REDIR_PROTO_TCP, UDP = REDIR_PROTO_UDP;
constexpr uint8_t ALLOW = REDIR_VERDICT_ALLOW, DENY = REDIR_VERDICT_DENY, REDIRECT = REDIR_VERDICT_REDIRECT;

// ---- targeted semantics ----

TEST(PolicyCompile, DenyWinsOverAllow) {
    auto p = load(doc(R"({"cidr":"203.0.113.0/24"})", R"({"cidr":"203.0.113.66/32","ports":[443]})"));
    auto cp = compile(p, 1);
    check_portsets_well_formed(cp);
    EXPECT_EQ(kernel(cp, ip("203.0.113.66"), 443, TCP), DENY);
    EXPECT_EQ(kernel(cp, ip("203.0.113.66"), 80, TCP), ALLOW);
    EXPECT_EQ(kernel(cp, ip("203.0.113.67"), 443, TCP), ALLOW);
    EXPECT_EQ(kernel(cp, ip("203.0.113.66"), 443, UDP), DENY);  // tcp-only allow
    EXPECT_TRUE(kernel_denied(cp, ip("203.0.113.66"), 443, TCP));
    EXPECT_FALSE(kernel_denied(cp, ip("203.0.113.66"), 444, TCP));
    EXPECT_FALSE(kernel_denied(cp, ip("203.0.113.67"), 443, TCP));
}

TEST(PolicyCompile, RangeEdgesAreExact) {
    auto p = load(doc(R"({"cidr":"198.51.100.0/24","ports":["8000-8100", 9000]})",
                      R"({"cidr":"198.51.100.0/24","ports":["8050-8060"]})"));
    auto cp = compile(p, 1);
    auto a = ip("198.51.100.9");
    EXPECT_EQ(kernel(cp, a, 7999, TCP), DENY);
    EXPECT_EQ(kernel(cp, a, 8000, TCP), ALLOW);
    EXPECT_EQ(kernel(cp, a, 8049, TCP), ALLOW);
    EXPECT_EQ(kernel(cp, a, 8050, TCP), DENY);
    EXPECT_EQ(kernel(cp, a, 8060, TCP), DENY);
    EXPECT_EQ(kernel(cp, a, 8061, TCP), ALLOW);
    EXPECT_EQ(kernel(cp, a, 8100, TCP), ALLOW);
    EXPECT_EQ(kernel(cp, a, 8101, TCP), DENY);
    EXPECT_EQ(kernel(cp, a, 8999, TCP), DENY);
    EXPECT_EQ(kernel(cp, a, 9000, TCP), ALLOW);
    EXPECT_EQ(kernel(cp, a, 9001, TCP), DENY);
    EXPECT_EQ(kernel(cp, a, 65535, TCP), DENY);
    EXPECT_EQ(kernel(cp, a, 1, TCP), DENY);
}

TEST(PolicyCompile, AllPortsMeansOneToMax) {
    auto cp = compile(load(doc(R"({"cidr":"198.51.100.0/24","protocol":"udp"})")), 1);
    auto a = ip("198.51.100.1");
    EXPECT_EQ(kernel(cp, a, 0, UDP), DENY);
    EXPECT_EQ(kernel(cp, a, 1, UDP), ALLOW);
    EXPECT_EQ(kernel(cp, a, 65535, UDP), ALLOW);
    EXPECT_EQ(kernel(cp, a, 443, TCP), DENY);
}

TEST(PolicyCompile, InspectWinsOverAllowButNotOverDeny) {
    auto p = load(doc(R"({"cidr":"192.0.2.0/24","ports":["1-1000"]})", R"({"cidr":"192.0.2.0/25","ports":[443]})",
                      R"({"cidr":"192.0.2.0/24","ports":[443, 80]})"));
    auto cp = compile(p, 3);
    EXPECT_EQ(kernel(cp, ip("192.0.2.200"), 443, TCP), REDIRECT);
    EXPECT_EQ(kernel(cp, ip("192.0.2.200"), 80, TCP), REDIRECT);
    EXPECT_EQ(kernel(cp, ip("192.0.2.200"), 81, TCP), ALLOW);
    EXPECT_EQ(kernel(cp, ip("192.0.2.1"), 443, TCP), DENY);
    EXPECT_EQ(kernel(cp, ip("192.0.2.1"), 80, TCP), REDIRECT);
}

TEST(PolicyCompile, V6PrefixesAndFamilySeparation) {
    auto p = load(doc(R"({"cidr":"2001:db8::/32","ports":[443]},{"cidr":"::/0","ports":[22]})",
                      R"({"cidr":"2001:db8:dead::/48"})"));
    auto cp = compile(p, 1);
    EXPECT_EQ(kernel(cp, ip("2001:db8::1"), 443, TCP), ALLOW);
    EXPECT_EQ(kernel(cp, ip("2001:db8::1"), 22, TCP), ALLOW);
    EXPECT_EQ(kernel(cp, ip("2001:db8:dead::1"), 443, TCP), DENY);
    EXPECT_EQ(kernel(cp, ip("2001:db9::1"), 22, TCP), ALLOW);
    // ::/0 does not reach IPv4 (v4-mapped), nor special v6 ranges.
    EXPECT_EQ(kernel(cp, ip("192.0.2.1"), 22, TCP), DENY);
    EXPECT_EQ(kernel(cp, ip("::ffff:192.0.2.1"), 22, TCP), DENY);
    EXPECT_EQ(kernel(cp, ip("fd00::1"), 22, TCP), DENY);
    EXPECT_EQ(kernel(cp, ip("::1"), 22, TCP), DENY);
    EXPECT_EQ(kernel(cp, ip("64:ff9b::a00:1"), 22, TCP), DENY);
    EXPECT_EQ(kernel(cp, ip("2002:a00::1"), 22, TCP), DENY);
    EXPECT_EQ(kernel(cp, ip("ff02::1"), 22, TCP), DENY);
}

TEST(PolicyCompile, V4RulesCoverV4MappedDestinations) {
    auto cp = compile(load(doc(R"({"cidr":"0.0.0.0/0","ports":[443]})")), 1);
    EXPECT_EQ(kernel(cp, ip("::ffff:192.0.2.1"), 443, TCP), ALLOW);
    EXPECT_EQ(kernel(cp, ip("192.0.2.1"), 443, TCP), ALLOW);
    EXPECT_EQ(kernel(cp, ip("2001:db8::1"), 443, TCP), DENY);
    // LPM keys: v4 /N is 32 + 96 + N.
    bool found = false;
    for (const auto& e : cp.lpm) {
        if (e.key.prefixlen == 32 + 96 + 0) {
            found = true;
            EXPECT_EQ(e.key.policy_id, 1u);
            EXPECT_EQ(e.key.addr[10], 0xff);
            EXPECT_EQ(e.key.addr[11], 0xff);
        }
    }
    EXPECT_TRUE(found);
}

TEST(PolicyCompile, SpecialAddressesNeedANamingRule) {
    auto broad = compile(load(doc(R"({"cidr":"0.0.0.0/0"})")), 1);
    EXPECT_EQ(kernel(broad, ip("8.8.8.8"), 443, TCP), ALLOW);
    EXPECT_EQ(kernel(broad, ip("10.0.0.1"), 443, TCP), DENY);
    EXPECT_EQ(kernel(broad, ip("172.16.5.5"), 443, TCP), DENY);
    EXPECT_EQ(kernel(broad, ip("192.168.1.1"), 443, TCP), DENY);
    EXPECT_EQ(kernel(broad, ip("100.64.0.1"), 443, TCP), DENY);
    EXPECT_EQ(kernel(broad, ip("127.0.0.1"), 443, TCP), DENY);
    EXPECT_EQ(kernel(broad, ip("198.18.0.1"), 443, TCP), DENY);
    EXPECT_EQ(kernel(broad, ip("224.0.0.251"), 5353, UDP), DENY);
    EXPECT_EQ(kernel(broad, ip("255.255.255.255"), 443, TCP), DENY);
    EXPECT_EQ(kernel(broad, ip("169.254.169.254"), 80, TCP), DENY);
    EXPECT_EQ(kernel(broad, ip("0.1.2.3"), 80, TCP), DENY);

    auto named = compile(load(doc(R"({"cidr":"0.0.0.0/0"},{"cidr":"10.0.0.0/8","ports":[5432]},)"
                                  R"({"cidr":"127.0.0.1/32","ports":[8080]},{"cidr":"240.0.0.0/4"})")),
                         1);
    EXPECT_EQ(kernel(named, ip("10.0.0.1"), 5432, TCP), ALLOW);
    EXPECT_EQ(kernel(named, ip("10.0.0.1"), 443, TCP), DENY);  // the broad rule still does not count inside 10/8
    EXPECT_EQ(kernel(named, ip("127.0.0.1"), 8080, TCP), ALLOW);
    EXPECT_EQ(kernel(named, ip("127.0.0.2"), 8080, TCP), DENY);
    EXPECT_EQ(kernel(named, ip("240.1.2.3"), 80, TCP), ALLOW);
    EXPECT_EQ(kernel(named, ip("255.255.255.255"), 80, TCP), DENY);  // broadcast is its own special range
    EXPECT_EQ(kernel(named, ip("8.8.8.8"), 80, TCP), ALLOW);

    auto v6 = compile(load(doc(R"({"cidr":"::1/128","ports":[8080]},{"cidr":"fd00::/8"})")), 1);
    EXPECT_EQ(kernel(v6, ip("::1"), 8080, TCP), ALLOW);
    EXPECT_EQ(kernel(v6, ip("fd12::1"), 1, TCP), ALLOW);
    EXPECT_EQ(kernel(v6, ip("fc00::1"), 1, TCP), DENY);
}

TEST(PolicyCompile, DenyCountsInsideSpecialRanges) {
    auto cp = compile(load(doc(R"({"cidr":"10.0.0.0/8"})", R"({"cidr":"0.0.0.0/0","ports":[25]})")), 1);
    EXPECT_EQ(kernel(cp, ip("10.1.1.1"), 25, TCP), DENY);
    EXPECT_EQ(kernel(cp, ip("10.1.1.1"), 26, TCP), ALLOW);
    EXPECT_TRUE(kernel_denied(cp, ip("10.1.1.1"), 25, TCP));
    EXPECT_TRUE(kernel_denied(cp, ip("8.8.8.8"), 25, TCP));
}

TEST(PolicyCompile, PortsMergeAndPortsetsAreShared) {
    auto cp = compile(load(doc(R"({"cidr":"192.0.2.0/24","ports":[80,81,"82-90",443]},)"
                               R"({"cidr":"198.51.100.0/24","ports":["80-90",443]})")),
                      9);
    check_portsets_well_formed(cp);
    ASSERT_EQ(cp.lpm.size(), 2u);
    EXPECT_EQ(cp.lpm[0].val.portset_id, cp.lpm[1].val.portset_id);
    const redir_portset* ps = cp.portset(cp.lpm[0].val.portset_id);
    ASSERT_NE(ps, nullptr);
    ASSERT_EQ(ps->count, 2u);
    EXPECT_EQ(ps->r[0].lo, 80);
    EXPECT_EQ(ps->r[0].hi, 90);
    EXPECT_EQ(ps->r[1].lo, 443);
    EXPECT_EQ(cp.portsets[0].key.policy_id, 9u);
}

TEST(PolicyCompile, EmptyPolicyEmitsNoEntries) {
    auto cp = compile(load(doc("")), 1);
    EXPECT_TRUE(cp.lpm.empty());
    EXPECT_TRUE(cp.portsets.empty());
}

TEST(PolicyCompile, TooManyRangesIsRejectedNamingTheRule) {
    std::string ports;
    for (int i = 0; i < 65; ++i) ports += (i ? "," : "") + std::to_string(1000 + 2 * i);
    auto p = load(doc(R"({"cidr":"192.0.2.0/24","ports":[)" + ports + "]}"));
    try {
        compile(p, 1);
        FAIL() << "expected CompileError";
    } catch (const CompileError& e) {
        EXPECT_EQ(std::string(e.what()),
                  "t.json:1:34: allow[0]: port set for 192.0.2.0/24 needs 65 port ranges after combining the rules "
                  "that apply; the limit is 64 (merge or simplify the port lists)");
    }
    // 64 is fine, and so is 64 per protocol split into tcp + any where the total stays within the limit.
    std::string ports64;
    for (int i = 0; i < 64; ++i) ports64 += (i ? "," : "") + std::to_string(1000 + 2 * i);
    EXPECT_NO_THROW(compile(load(doc(R"({"cidr":"192.0.2.0/24","ports":[)" + ports64 + "]}")), 1));
    // Deny punching holes can also overflow.
    auto holes = load(doc(R"({"cidr":"192.0.2.0/24","ports":["1000-2000"]})",
                          R"({"cidr":"192.0.2.0/24","ports":[)" + ports + "]}"));
    EXPECT_THROW(compile(holes, 1), CompileError);
}

// ---- host rules ----

TEST(PolicyCompile, HostMatching) {
    auto p = load(doc(R"({"host":"api.github.com","ports":[443]},{"host":"*.github.com","ports":[22]},)"
                      R"({"host":"*.pythonhosted.org","ports":[443]},)"
                      R"({"host":"registry.internal.example","allowed_ips":["10.20.0.0/16"],"ports":[443]})",
                      R"({"host":"evil.github.com"},{"host":"*.corp.github.com","ports":[22]})",
                      R"({"host":"*.inspect.example"})"));
    auto cp = compile(p, 1);
    check_portsets_well_formed(cp);

    EXPECT_FALSE(cp.match_host("github.com"));  // *.suffix does not match the bare suffix
    EXPECT_FALSE(cp.match_host("example.com"));
    EXPECT_FALSE(cp.match_host("evil.github.com"));  // deny wins: all ports denied -> NXDOMAIN
    EXPECT_FALSE(cp.match_host("pythonhosted.org"));
    ASSERT_TRUE(cp.match_host("files.pythonhosted.org"));
    ASSERT_TRUE(cp.match_host("FILES.PythonHosted.org."));
    EXPECT_EQ(cp.match_host("a.b.pythonhosted.org")->pattern, "*.pythonhosted.org");

    auto pub = ip("140.82.112.3");
    auto id = cp.admit("api.github.com", pub);
    ASSERT_TRUE(id);
    const redir_portset* ps = cp.portset(*id);
    ASSERT_NE(ps, nullptr);
    auto verdict = [&](uint32_t psid, uint16_t port, uint8_t proto) { return portset_verdict(cp, psid, port, proto); };
    EXPECT_EQ(verdict(*id, 443, TCP), ALLOW);  // exact rule
    EXPECT_EQ(verdict(*id, 22, TCP), ALLOW);   // plus the wildcard above it
    EXPECT_EQ(verdict(*id, 80, TCP), DENY);

    auto other = cp.admit("x.github.com", pub);
    ASSERT_TRUE(other);
    EXPECT_EQ(verdict(*other, 22, TCP), ALLOW);
    EXPECT_EQ(verdict(*other, 443, TCP), DENY);
    EXPECT_FALSE(cp.admit("x.corp.github.com", pub));  // only port 22 was allowed, and it is denied

    // DNS rebinding: a public name resolving to a special address is not admitted.
    EXPECT_FALSE(cp.admit("x.github.com", ip("10.0.0.5")));
    EXPECT_FALSE(cp.admit("x.github.com", ip("127.0.0.1")));
    EXPECT_FALSE(cp.admit("x.github.com", ip("169.254.169.254")));
    EXPECT_FALSE(cp.admit("x.github.com", ip("0.0.0.0")));
    EXPECT_FALSE(cp.admit("x.github.com", ip("::1")));
    // allowed_ips pins the addresses a name may resolve to.
    EXPECT_TRUE(cp.admit("registry.internal.example", ip("10.20.3.4")));
    EXPECT_FALSE(cp.admit("registry.internal.example", ip("10.21.3.4")));
    EXPECT_FALSE(cp.admit("registry.internal.example", pub));

    auto ins = cp.admit("a.inspect.example", pub);
    ASSERT_TRUE(ins);
    EXPECT_EQ(verdict(*ins, 443, TCP), REDIRECT);

    // Each host rule carries its own port set too.
    ASSERT_EQ(cp.host_rules.size(), 7u);
    EXPECT_EQ(cp.host_rules[0].pattern, "api.github.com");
    EXPECT_FALSE(cp.host_rules[0].is_wildcard);
    EXPECT_TRUE(cp.host_rules[1].is_wildcard);
    EXPECT_EQ(verdict(cp.host_rules[0].portset_id, 443, TCP), ALLOW);
}

TEST(PolicyCompile, HostAdmissionsMatchBruteForce) {
    auto p = load(doc(R"({"host":"a.example","allowed_ips":["10.0.0.0/8","203.0.113.0/24"],"ports":[1,2]},)"
                      R"({"host":"*.example","allowed_ips":["10.1.0.0/16"],"ports":[3]},)"
                      R"({"host":"a.example","ports":[4],"protocol":"udp"})",
                      R"({"host":"*.example","ports":[2]})", R"({"host":"a.example","ports":[5]})"));
    auto cp = compile(p, 1);
    std::vector<Addr> addrs = {ip("10.0.0.1"), ip("10.1.0.1"), ip("203.0.113.5"), ip("198.51.100.1"),
                               ip("192.168.0.1"), ip("10.1.255.255")};
    for (const auto& a : addrs) {
        auto id = cp.admit("a.example", a);
        for (uint16_t port : {1, 2, 3, 4, 5, 6}) {
            for (uint8_t proto : {TCP, UDP}) {
                uint8_t want = DENY;
                bool special = is_special(a);
                auto in = [&](std::initializer_list<const char*> cidrs) {
                    for (auto c : cidrs)
                        if (parse_cidr(c).cidr->contains(a)) return true;
                    return false;
                };
                if (port == 1 && proto == TCP && in({"10.0.0.0/8", "203.0.113.0/24"})) want = ALLOW;
                if (port == 3 && proto == TCP && in({"10.1.0.0/16"})) want = ALLOW;
                if (port == 4 && proto == UDP && !special) want = ALLOW;
                if (port == 5) want = REDIRECT;
                if (port == 5 && !(proto == TCP)) want = DENY;
                if (port == 5 && proto == TCP && special) want = DENY;
                uint8_t got = id ? portset_verdict(cp, *id, port, proto) : DENY;
                EXPECT_EQ(got, want) << addr_to_string(a) << " " << port << "/" << int(proto);
            }
        }
    }
}

TEST(PolicyCompile, RandomPoliciesMatchReference) {
    std::mt19937 rng(12345);
    for (int iter = 0; iter < 300; ++iter) {
        auto list = [&](int max, bool tcp_only) {
            std::string s;
            int n = std::uniform_int_distribution<int>(0, max)(rng);
            for (int i = 0; i < n; ++i) s += (i ? "," : "") + random_rule(rng, tcp_only);
            return s;
        };
        std::string text = doc(list(8, false), list(4, false), list(3, true));
        auto r = parse_policy(text, "r.json");
        ASSERT_TRUE(r.ok()) << r.error_text() << text;
        const Policy& p = *r.policy;
        if (p.allow.empty() && p.deny.empty() && p.inspect.empty()) continue;
        uint32_t id = 1 + iter;
        auto cp = compile(p, id);
        check_portsets_well_formed(cp);
        for (int q = 0; q < 200; ++q) {
            Addr a = random_addr_near(rng, p);
            uint16_t port = static_cast<uint16_t>(std::uniform_int_distribution<int>(0, 52)(rng));
            uint8_t proto = rng() % 2 ? TCP : UDP;
            ASSERT_EQ(kernel(cp, a, port, proto), reference(p, a, port, proto))
                << "policy " << text << "\naddr " << addr_to_string(a) << " port " << port << " proto "
                << int(proto);
            ASSERT_EQ(kernel_denied(cp, a, port, proto), reference_denied(p, a, port, proto))
                << "deny set; policy " << text << "\naddr " << addr_to_string(a) << " port " << port;
        }
    }
}

TEST(PolicyCompile, HundredThousandRulesCompile) {
    std::mt19937 rng(7);
    Policy p;
    p.name = "big";
    p.source = "big.json";
    for (int i = 0; i < 100000; ++i) {
        Rule r;
        r.cidr = redir::testsupport::random_cidr(rng);
        uint16_t port = static_cast<uint16_t>(1 + rng() % 60000);
        r.ports = {{port, port}};
        (i % 10 == 0 ? p.deny : p.allow).push_back(std::move(r));
    }
    // Speed is asserted by bench/datapath/connect_bench (parse + compile + map
    // writes of 100k rules under 1 s), not in a timed unit test.
    auto cp = compile(p, 1);
    EXPECT_GT(cp.lpm.size(), 50000u);
}

}  // namespace

namespace {

// The worked examples of policy/README.md, verbatim.
TEST(PolicyCompile, ReadmeExamples) {
    auto ex1 = compile(load(R"({ "version": 1, "name": "ex1",
  "allow": [ { "cidr": "203.0.113.0/24", "ports": [80, "8000-8100"] },
             { "cidr": "0.0.0.0/0", "ports": [443] } ],
  "deny":  [ { "cidr": "203.0.113.66/32" } ] })"),
                       1);
    EXPECT_EQ(kernel(ex1, ip("203.0.113.5"), 80, TCP), ALLOW);
    EXPECT_EQ(kernel(ex1, ip("203.0.113.5"), 8101, TCP), DENY);
    EXPECT_EQ(kernel(ex1, ip("203.0.113.5"), 80, UDP), DENY);
    EXPECT_EQ(kernel(ex1, ip("203.0.113.66"), 443, TCP), DENY);
    EXPECT_EQ(kernel(ex1, ip("198.51.100.7"), 443, TCP), ALLOW);
    EXPECT_EQ(kernel(ex1, ip("10.0.0.1"), 443, TCP), DENY);
    EXPECT_EQ(kernel(ex1, ip("2001:db8::1"), 443, TCP), DENY);
    EXPECT_EQ(kernel(ex1, ip("169.254.169.254"), 80, TCP), DENY);

    auto ex2 = compile(load(R"({ "version": 1, "name": "ex2",
  "allow":   [ { "host": "*.github.com", "ports": [443] },
               { "host": "api.github.com", "ports": [22] } ],
  "deny":    [ { "host": "gist.github.com" } ],
  "inspect": [ { "host": "uploads.github.com", "ports": [443] } ] })"),
                       1);
    EXPECT_FALSE(ex2.match_host("github.com"));
    EXPECT_FALSE(ex2.match_host("gist.github.com"));
    auto api = ex2.admit("api.github.com", ip("140.82.112.6"));
    ASSERT_TRUE(api);
    EXPECT_EQ(portset_verdict(ex2, *api, 443, TCP), ALLOW);
    EXPECT_EQ(portset_verdict(ex2, *api, 22, TCP), ALLOW);
    auto up = ex2.admit("uploads.github.com", ip("140.82.112.9"));
    ASSERT_TRUE(up);
    EXPECT_EQ(portset_verdict(ex2, *up, 443, TCP), REDIRECT);
    EXPECT_TRUE(ex2.match_host("evil.github.com"));
    EXPECT_FALSE(ex2.admit("evil.github.com", ip("10.0.0.1")));
}

}  // namespace

namespace {

// ---- randomized: host admissions == brute force over the host entries ----

bool host_matches(const Rule& r, const std::string& name) {
    if (!r.is_wildcard()) return r.host == name;
    std::string suffix = r.host.substr(1);  // ".example"
    return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool host_admits(const Rule& r, const Addr& a) {
    if (r.allowed_ips.empty()) return !is_special(a);
    for (const auto& c : r.allowed_ips)
        if (c.contains(a)) return true;
    return false;
}

uint8_t host_reference(const Policy& p, const std::string& name, const Addr& a, uint16_t port, uint8_t proto) {
    if (is_never_reachable(a) || is_loopback(a)) return DENY;  // loopback: only a cidr rule names it
    auto covers = [&](const Rule& r) { return host_matches(r, name) && port_matches(r, port) && proto_matches(r, proto); };
    for (const auto& r : p.deny)
        if (r.is_host() && covers(r)) return DENY;
    for (const auto& r : p.inspect)
        if (r.is_host() && covers(r) && host_admits(r, a)) return REDIRECT;
    for (const auto& r : p.allow)
        if (r.is_host() && covers(r) && host_admits(r, a)) return ALLOW;
    return DENY;
}

// random_ports() draws from 1-50; beyond that only "all ports" entries matter.
const std::vector<uint16_t> kHostPorts = [] {
    std::vector<uint16_t> v;
    for (uint16_t p = 0; p <= 52; ++p) v.push_back(p);
    v.push_back(1000);
    v.push_back(65535);
    return v;
}();

bool host_reference_nx(const Policy& p, const std::string& name) {
    for (uint16_t port : kHostPorts) {
        for (uint8_t proto : {TCP, UDP}) {
            bool denied = false, allowed = false;
            for (const auto& r : p.deny)
                denied |= r.is_host() && host_matches(r, name) && port_matches(r, port) && proto_matches(r, proto);
            for (const auto* list : {&p.allow, &p.inspect})
                for (const auto& r : *list)
                    allowed |= r.is_host() && host_matches(r, name) && port_matches(r, port) && proto_matches(r, proto);
            if (allowed && !denied) return false;
        }
    }
    return true;
}

TEST(PolicyCompile, RandomHostPoliciesMatchReference) {
    const std::vector<std::string> patterns = {"x.test", "a.x.test", "b.a.x.test", "*.x.test", "*.a.x.test",
                                               "*.b.a.x.test", "y.test", "*.test"};
    const std::vector<std::string> names = {"x.test", "a.x.test", "b.a.x.test", "c.b.a.x.test", "q.x.test",
                                            "q.a.x.test", "y.test", "z.test", "test", "other.example"};
    const std::vector<std::string> ip_sets = {"10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "203.0.113.0/24",
                                              "203.0.113.128/25", "2001:db8::/32", "126.0.0.0/7", "0.0.0.0/0",
                                              "fd00::/8", "64:ff9b::/96"};
    const std::vector<Addr> addrs = {ip("10.0.0.1"),     ip("10.1.0.1"),    ip("10.1.2.3"),  ip("203.0.113.1"),
                                     ip("203.0.113.200"), ip("198.51.100.1"), ip("2001:db8::5"), ip("127.0.0.1"),
                                     ip("192.168.1.1"),   ip("169.254.169.254"), ip("2001:db9::1"),
                                     ip("0.0.0.0"),       ip("fd00:ec2::254"), ip("fd00::5"), ip("64:ff9b::a9fe:a9fe"),
                                     ip("64:ff9b::cb00:7101"), ip("126.0.0.1")};
    std::mt19937 rng(99);
    auto rule = [&](bool tcp_only, bool may_pin) {
        static const char* protos[] = {"tcp", "udp", "any"};
        std::string s = R"({"host":")" + patterns[rng() % patterns.size()] + "\"";
        std::string ports = random_ports(rng);
        s += ports;
        s += R"(,"protocol":")" + std::string(tcp_only ? "tcp" : protos[rng() % 3]) + "\"";
        if (may_pin && rng() % 2) {
            s += R"(,"allowed_ips":[)";
            int n = 1 + rng() % 2;
            for (int i = 0; i < n; ++i) s += (i ? ",\"" : "\"") + ip_sets[rng() % ip_sets.size()] + "\"";
            s += "]";
        }
        return s + "}";
    };
    for (int iter = 0; iter < 300; ++iter) {
        auto list = [&](int max, bool tcp_only, bool may_pin) {
            std::string s;
            int n = std::uniform_int_distribution<int>(0, max)(rng);
            for (int i = 0; i < n; ++i) s += (i ? "," : "") + rule(tcp_only, may_pin);
            return s;
        };
        std::string text = doc(list(5, false, true), list(2, false, false), list(2, true, true));
        auto r = parse_policy(text, "h.json");
        ASSERT_TRUE(r.ok()) << r.error_text() << text;
        const Policy& p = *r.policy;
        auto cp = compile(p, 5);
        check_portsets_well_formed(cp);
        for (const auto& name : names) {
            auto m = cp.match_host(name);
            bool nx = host_reference_nx(p, name);
            ASSERT_EQ(!m.has_value(), nx) << "name " << name << "\npolicy " << text;
            if (!m) continue;
            for (const auto& a : addrs) {
                auto id = cp.admit(*m, a);
                for (uint16_t port : kHostPorts) {
                    for (uint8_t proto : {TCP, UDP}) {
                        uint8_t got = id ? portset_verdict(cp, *id, port, proto) : DENY;
                        ASSERT_EQ(got, host_reference(p, name, a, port, proto))
                            << name << " " << addr_to_string(a) << " " << port << "/" << int(proto) << "\npolicy "
                            << text;
                    }
                }
            }
        }
    }
}

}  // namespace

namespace {

// The one admission path for resolved addresses (the DNS core hands every
// address to it): rebinding, metadata in every embedding, loopback.
TEST(PolicyAdmit, WideAllowedIpsNeverAdmitMetadataOrLoopback) {
    auto p = load(doc(R"({"host":"wide.example","allowed_ips":["0.0.0.0/0","::/0","100.64.0.0/10","fd00::/8",)"
                      R"("64:ff9b::/96","2002::/16","::/96","::ffff:0:0/96"]},)"
                      R"({"host":"public.example"})"));
    auto cp = compile(p, 1);
    for (const char* never : {"169.254.169.254", "::ffff:169.254.169.254", "fd00:ec2::254", "100.100.100.200",
                              "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "::a9fe:a9fe", "fe80::1",
                              "127.0.0.1", "127.1.2.3", "::1", "0.0.0.0", "::"}) {
        EXPECT_FALSE(cp.admit("wide.example", ip(never))) << never;
        EXPECT_FALSE(cp.admit("public.example", ip(never))) << never;
    }
    for (const char* ok : {"100.64.0.5", "fd00::5", "fd00:ec2::253", "100.100.100.201", "64:ff9b::cb00:7105",
                           "2002:cb00:7105::1", "10.0.0.1"})
        EXPECT_TRUE(cp.admit("wide.example", ip(ok))) << ok;
    // Without allowed_ips only public addresses: DNS rebinding to any special range is refused.
    for (const char* special : {"10.0.0.5", "100.64.1.1", "198.18.0.1", "::ffff:10.0.0.5", "fd00::1",
                                "64:ff9b::a00:5", "2002:a00:5::1", "224.0.0.1", "255.255.255.255", "fec0::1",
                                "100::1", "::a00:5"})
        EXPECT_FALSE(cp.admit("public.example", ip(special))) << special;
    EXPECT_TRUE(cp.admit("public.example", ip("140.82.112.5")));
    EXPECT_TRUE(cp.admit("public.example", ip("2001:db8::5")));
}

// The table itself: classes of representative addresses.
TEST(SpecialTable, Classes) {
    for (const char* s : {"10.1.2.3", "172.31.255.255", "192.0.0.8", "198.19.255.1", "0.1.2.3", "240.0.0.1",
                          "64:ff9b::1", "2002::1", "ff02::1", "100.64.0.1", "fc00::1", "255.255.255.255"})
        EXPECT_TRUE(is_special(ip(s))) << s;
    for (const char* s : {"172.32.0.1", "192.0.1.1", "198.20.0.1", "203.0.113.5", "2001:db8::1", "8.8.8.8"})
        EXPECT_FALSE(is_special(ip(s))) << s;
    for (const char* s : {"169.254.0.1", "fe80::1", "fd00:ec2::254", "100.100.100.200", "64:ff9b::a9fe:1",
                          "2002:a9fe:1::", "::a9fe:1"})
        EXPECT_TRUE(is_never_reachable(ip(s))) << s;
    for (const char* s : {"fec0::1", "fd00:ec2::253", "100.100.100.199", "64:ff9b::a9ff:1", "2002:a9ff::1"})
        EXPECT_FALSE(is_never_reachable(ip(s))) << s;
    for (const char* s : {"127.0.0.1", "127.255.255.255", "::1", "0.0.0.0", "::"}) EXPECT_TRUE(is_loopback(ip(s))) << s;
    for (const char* s : {"0.0.0.1", "::2", "126.255.255.255"}) EXPECT_FALSE(is_loopback(ip(s))) << s;
}

}  // namespace
