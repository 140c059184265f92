// The revocation decision (agent/revoke.hpp still_allowed) against an
// in-memory copy of the kernel maps: each row one kind of connection a
// sandbox may hold when its policy is replaced.
#include <gtest/gtest.h>

#include <cstring>
#include <map>

#include "agent/revoke.hpp"

using namespace redir;
using namespace redir::agent;

namespace {

constexpr uint32_t kPolicy = 7;
constexpr uint64_t kCg = 42;

// Exact-address "LPM" is enough here: the decision is what is tested, not the trie.
struct FakeKernel : KernelView {
    std::map<Addr, redir_lpm_val> lpms;
    std::map<uint32_t, redir_portset> sets;
    std::map<Addr, redir_dns_allow_val> admissions;
    uint64_t now = 1'000;
    std::optional<redir_lpm_val> lpm(uint32_t id, const Addr& a) const override {
        auto it = lpms.find(a);
        return id == kPolicy && it != lpms.end() ? std::optional(it->second) : std::nullopt;
    }
    std::optional<redir_portset> portset(uint32_t id, uint32_t ps) const override {
        auto it = sets.find(ps);
        return id == kPolicy && it != sets.end() ? std::optional(it->second) : std::nullopt;
    }
    std::optional<redir_dns_allow_val> dns(uint64_t cg, const Addr& a) const override {
        auto it = admissions.find(a);
        return cg == kCg && it != admissions.end() ? std::optional(it->second) : std::nullopt;
    }
    uint64_t now_boot_ns() const override { return now; }
};

Addr ip(const char* s) { return *parse_addr(s); }

redir_portset ports(uint16_t lo, uint16_t hi, uint8_t verdict, uint8_t proto = REDIR_PROTO_TCP) {
    redir_portset p{};
    p.count = 1;
    p.r[0] = {lo, hi, proto, verdict, 0};
    return p;
}

struct Fixture {
    FakeKernel k;
    redir_config cfg{};
    redir_attach_val att{};
    Fixture() {
        att.policy_id = kPolicy;
        att.flags = REDIR_ATTACH_F_INFERENCE;
        att.dns_port = 5353;
        std::memcpy(cfg.inference_vip4.b, ip("198.18.0.1").data(), 16);
        k.sets[1] = ports(443, 443, REDIR_VERDICT_ALLOW);
        k.sets[2] = ports(8000, 8000, REDIR_VERDICT_REDIRECT);
        k.sets[3] = ports(443, 443, REDIR_VERDICT_ALLOW);  // a host rule's ports
        k.lpms[ip("203.0.113.10")] = {1, 0, 0, 0};
        k.lpms[ip("203.0.113.30")] = {2, 0, 0, 0};
        k.admissions[ip("198.51.100.10")] = {kPolicy, 3, 5'000};
        k.admissions[ip("198.51.100.11")] = {kPolicy - 1, 3, 5'000};  // left from the old policy
        k.admissions[ip("198.51.100.12")] = {kPolicy, 3, 500};        // expired
    }
    bool allowed(const char* dst, uint16_t port, uint8_t proto = REDIR_PROTO_TCP, bool own_netns = false) const {
        SandboxSocket s;
        s.dst = ip(dst);
        s.dport = port;
        s.proto = proto;
        s.own_netns = own_netns;
        return still_allowed(k, cfg, att, kCg, s);
    }
    bool redirected(uint8_t reason, const char* orig, uint16_t port) const {
        SandboxSocket s;
        s.dst = ip("127.0.0.1");
        s.dport = 40000;
        s.proto = REDIR_PROTO_TCP;
        redir_sk_state st{};
        st.verdict = REDIR_VERDICT_REDIRECT;
        st.reason = reason;
        std::memcpy(st.orig_addr.b, ip(orig).data(), 16);
        st.orig_port = port;
        s.state = st;
        return still_allowed(k, cfg, att, kCg, s);
    }
};

}  // namespace

TEST(Revoke, DirectConnectionsAreJudgedLikeConnect) {
    Fixture f;
    EXPECT_TRUE(f.allowed("203.0.113.10", 443));
    EXPECT_TRUE(f.allowed("::ffff:203.0.113.10", 443)) << "v4-mapped is the same destination";
    EXPECT_FALSE(f.allowed("203.0.113.10", 444)) << "port no longer allowed";
    EXPECT_FALSE(f.allowed("203.0.113.10", 443, REDIR_PROTO_UDP)) << "protocol no longer allowed";
    EXPECT_FALSE(f.allowed("203.0.113.20", 443)) << "address no longer allowed";
    EXPECT_FALSE(f.allowed("203.0.113.30", 8000)) << "now inspected: a direct connection bypasses the relay";
    EXPECT_FALSE(f.allowed("169.254.169.254", 80));
    EXPECT_FALSE(f.allowed("198.18.0.1", 443)) << "the inference VIP is only reached through the terminator";
    EXPECT_FALSE(f.allowed("203.0.113.10", 53)) << "DNS goes to the responder";
}

TEST(Revoke, DnsAdmissionsCountOnlyUnderTheNewPolicyAndUntilTheirExpiry) {
    Fixture f;
    EXPECT_TRUE(f.allowed("198.51.100.10", 443));
    EXPECT_FALSE(f.allowed("198.51.100.10", 80));
    EXPECT_FALSE(f.allowed("198.51.100.11", 443)) << "admission not carried over by the new policy";
    EXPECT_FALSE(f.allowed("198.51.100.12", 443)) << "expired admission";
}

TEST(Revoke, LoopbackFollowsTheNamespaceRule) {
    Fixture f;
    EXPECT_TRUE(f.allowed("127.0.0.1", 8080, REDIR_PROTO_TCP, /*own_netns=*/true));
    EXPECT_FALSE(f.allowed("127.0.0.1", 8080, REDIR_PROTO_TCP, /*own_netns=*/false));
}

TEST(Revoke, RedirectedConnectionsAreJudgedByTheirOriginalDestination) {
    Fixture f;
    EXPECT_TRUE(f.redirected(REDIR_REASON_DNS, "192.0.2.53", 53));
    EXPECT_TRUE(f.redirected(REDIR_REASON_INFERENCE, "198.18.0.1", 443));
    EXPECT_TRUE(f.redirected(REDIR_REASON_POLICY, "203.0.113.30", 8000)) << "still inspected";
    EXPECT_TRUE(f.redirected(REDIR_REASON_POLICY, "203.0.113.10", 443)) << "now plainly allowed";
    EXPECT_FALSE(f.redirected(REDIR_REASON_POLICY, "203.0.113.20", 8000)) << "no longer allowed at all";
    f.att.flags = 0;
    EXPECT_FALSE(f.redirected(REDIR_REASON_INFERENCE, "198.18.0.1", 443)) << "inference switched off";
}
