#pragma once
// The policy's meaning by brute force over its rules (the reference every
// compiled form is checked against), and random overlapping policies to check
// it on: used by the compiler's unit test (against a C++ model of the LPM
// lookup) and by the kernel test (against the BPF programs themselves).
#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "policy/compile.hpp"
#include "policy/parse.hpp"

namespace redir::testsupport::policyref {

using namespace redir::policy;

// ---- the reference: the policy's meaning, by brute force over the rules ----

inline bool proto_matches(const Rule& r, uint8_t proto) {
    return r.protocol == Protocol::any || (r.protocol == Protocol::tcp) == (proto == REDIR_PROTO_TCP);
}
inline bool port_matches(const Rule& r, uint16_t port) {
    if (r.ports.empty()) return port >= 1;
    for (auto pr : r.ports) {
        if (port >= pr.lo && port <= pr.hi) return true;
    }
    return false;
}
inline bool rule_matches(const Rule& r, const Addr& a, uint16_t port, uint8_t proto) {
    return r.cidr && r.cidr->contains(a) && port_matches(r, port) && proto_matches(r, proto);
}

// Verdict for a cidr-rule decision (what the LPM lookup must return).
inline uint8_t reference(const Policy& p, const Addr& a, uint16_t port, uint8_t proto) {
    if (is_never_reachable(a)) return REDIR_VERDICT_DENY;
    for (const auto& r : p.deny) {
        if (rule_matches(r, a, port, proto)) return REDIR_VERDICT_DENY;
    }
    const SpecialRange* s = innermost_special(a);
    auto counts = [&](const Rule& r) { return !s || s->cidr.contains(*r.cidr); };
    for (const auto& r : p.inspect) {
        if (rule_matches(r, a, port, proto) && counts(r)) return REDIR_VERDICT_REDIRECT;
    }
    for (const auto& r : p.allow) {
        if (rule_matches(r, a, port, proto) && counts(r)) return REDIR_VERDICT_ALLOW;
    }
    return REDIR_VERDICT_DENY;
}

inline bool reference_denied(const Policy& p, const Addr& a, uint16_t port, uint8_t proto) {
    for (const auto& r : p.deny) {
        if (rule_matches(r, a, port, proto)) return true;
    }
    return false;
}

inline std::string doc(const std::string& allow, const std::string& deny = "", const std::string& inspect = "") {
    return R"({"version":1,"name":"t","allow":[)" + allow + R"(],"deny":[)" + deny + R"(],"inspect":[)" + inspect +
           "]}";
}


// ---- randomized: compiled LPM == reference semantics ----

inline std::string random_cidr(std::mt19937& rng) {
    // Draw from a small universe so that rules overlap each other and the special ranges a lot.
    static const char* v4_bases[] = {"10.0.0.0", "10.1.0.0", "10.1.2.0", "192.0.2.0", "192.0.2.128", "0.0.0.0",
                                     "127.0.0.0", "172.16.0.0", "192.168.1.0", "203.0.113.0", "240.0.0.0",
                                     "255.255.255.255", "198.18.0.0", "100.64.0.0", "8.8.8.0", "169.0.0.0"};
    static const char* v6_bases[] = {"::", "2001:db8::", "2001:db8:1::", "fd00::", "fc00::", "::ffff:0:0",
                                     "64:ff9b::", "2002::", "ff00::", "::1", "2001:db8:1:2::"};
    std::uniform_int_distribution<int> coin(0, 3);
    if (coin(rng) != 0) {
        const char* b = v4_bases[rng() % (sizeof v4_bases / sizeof *v4_bases)];
        auto a = *parse_addr(b);
        int len = std::uniform_int_distribution<int>(0, 32)(rng);
        Cidr c;
        c.len = static_cast<uint8_t>(96 + len);
        c.v4 = true;
        // Mask to the prefix.
        for (int i = 0; i < 16; ++i) {
            int bits = std::clamp(c.len - i * 8, 0, 8);
            c.addr[i] = bits ? static_cast<uint8_t>(a[i] & (0xff00 >> bits)) : 0;
        }
        if (parse_cidr(c.to_string()).cidr) return c.to_string();
        return "192.0.2.0/24";  // inside link-local: not allowed in a policy
    }
    const char* b = v6_bases[rng() % (sizeof v6_bases / sizeof *v6_bases)];
    auto a = *parse_addr(b);
    int len = std::uniform_int_distribution<int>(0, 128)(rng);
    Cidr c;
    c.len = static_cast<uint8_t>(len);
    for (int i = 0; i < 16; ++i) {
        int bits = std::clamp(len - i * 8, 0, 8);
        c.addr[i] = bits ? static_cast<uint8_t>(a[i] & (0xff00 >> bits)) : 0;
    }
    c.v4 = c.len >= 96 && c.addr[10] == 0xff && c.addr[11] == 0xff;  // how the parser reads it back
    return c.to_string();
}

inline std::string random_ports(std::mt19937& rng) {
    std::uniform_int_distribution<int> n(0, 3);
    int k = n(rng);
    if (k == 0) return "";
    std::string out = R"(,"ports":[)";
    for (int i = 0; i < k; ++i) {
        int lo = std::uniform_int_distribution<int>(1, 40)(rng);
        int hi = lo + std::uniform_int_distribution<int>(0, 10)(rng);
        if (i) out += ",";
        out += rng() % 2 ? std::to_string(lo) : "\"" + std::to_string(lo) + "-" + std::to_string(hi) + "\"";
    }
    return out + "]";
}

inline std::string random_rule(std::mt19937& rng, bool tcp_only) {
    static const char* protos[] = {"tcp", "udp", "any"};
    std::string proto = tcp_only ? "tcp" : protos[rng() % 3];
    return R"({"cidr":")" + random_cidr(rng) + "\"" + random_ports(rng) + R"(,"protocol":")" + proto + "\"}";
}

inline Addr random_addr_near(std::mt19937& rng, const Policy& p) {
    std::vector<Cidr> all;
    for (const auto* list : {&p.allow, &p.deny, &p.inspect})
        for (const auto& r : *list) all.push_back(*r.cidr);
    for (const auto& s : special_ranges()) all.push_back(s.cidr);
    const Cidr& c = all[rng() % all.size()];
    Addr a = c.addr;
    // Random host bits, often at the edges of the prefix.
    int mode = rng() % 4;
    for (int bit = c.len; bit < 128; ++bit) {
        bool v = mode == 0 ? false : mode == 1 ? true : (rng() & 1);
        if (v) a[bit / 8] |= static_cast<uint8_t>(0x80 >> (bit % 8));
    }
    if (rng() % 8 == 0 && c.len > 0) {  // just outside: flip the last prefix bit
        int bit = c.len - 1;
        a[bit / 8] ^= static_cast<uint8_t>(0x80 >> (bit % 8));
    }
    return a;
}

}  // namespace redir::testsupport::policyref
