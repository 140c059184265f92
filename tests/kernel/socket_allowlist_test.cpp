// Real-kernel tests of the socket allowlist: in an attached cgroup only TCP
// stream and UDP datagram inet sockets open (cgroup/sock_create), and, where
// the kernel runs lsm_cgroup programs, no family but unix/netlink/inet
// (lsm_cgroup/socket_create). Each refused kind is shown to work outside the
// sandbox on this kernel, otherwise the case is skipped with the reason.
#include <linux/if_ether.h>

#include "sandbox_fixture.hpp"

using namespace redir;
using namespace redir::kerneltest;

namespace {

#ifndef IPPROTO_MPTCP
#define IPPROTO_MPTCP 262
#endif
#ifndef SOCK_DCCP
#define SOCK_DCCP 6
#endif
constexpr int kIpprotoL2tp = 115;

struct SocketKind {
    const char* name;
    int family;
    int type;
    int protocol;
};

std::ostream& operator<<(std::ostream& os, const SocketKind& k) { return os << k.name; }

std::string kind_text(const SocketKind& k) {
    return std::string(k.name) + " (socket(" + std::to_string(k.family) + ", " + std::to_string(k.type) + ", " +
           std::to_string(k.protocol) + "))";
}

// ---- inet sockets the connect/sendmsg programs do not govern ----

class InetRefused : public SandboxTest, public ::testing::WithParamInterface<SocketKind> {};

TEST_P(InetRefused, RefusedInSandboxWithAuditEventWhileWorkingOutside) {
    const SocketKind k = GetParam();
    int out = outside([k] { return try_socket(k.family, k.type, k.protocol); });
    if (out != 0)
        GTEST_SKIP() << kind_text(k) << " fails outside any sandbox on this kernel too (" << std::strerror(out)
                     << "), so there is nothing for the sandbox to refuse";
    ASSERT_EQ(::geteuid(), 0u) << "the sandboxed child must be root: refusal must not depend on privileges";
    EXPECT_EQ(in_sandbox([k] { return try_socket(k.family, k.type, k.protocol); }), EPERM) << kind_text(k);
    // With SOCK_NONBLOCK the type argument carries flags; still refused.
    EXPECT_EQ(in_sandbox([k] { return try_socket(k.family, k.type | SOCK_NONBLOCK, k.protocol); }), EPERM)
        << kind_text(k);

    auto events = drain_events();
    size_t matching = 0;
    for (auto& e : events) {
        if (e.kind != REDIR_EV_SOCKET) continue;
        EXPECT_EQ(e.verdict, REDIR_VERDICT_DENY);
        EXPECT_EQ(e.reason, REDIR_REASON_SOCKET_TYPE);
        EXPECT_EQ(e.policy_id, policy_id_);
        if (e.family == k.family && e.sock_type == k.type && e.sock_protocol == k.protocol) matching++;
    }
    EXPECT_EQ(matching, 2u) << "one audit event per refused socket(), naming family, type and full protocol";
}

INSTANTIATE_TEST_SUITE_P(
    Socket, InetRefused,
    ::testing::Values(SocketKind{"Mptcp4", AF_INET, SOCK_STREAM, IPPROTO_MPTCP},
                      SocketKind{"Mptcp6", AF_INET6, SOCK_STREAM, IPPROTO_MPTCP},
                      SocketKind{"UdpLite4", AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE},
                      SocketKind{"UdpLite6", AF_INET6, SOCK_DGRAM, IPPROTO_UDPLITE},
                      SocketKind{"SctpStream4", AF_INET, SOCK_STREAM, IPPROTO_SCTP},
                      SocketKind{"SctpSeqpacket6", AF_INET6, SOCK_SEQPACKET, IPPROTO_SCTP},
                      SocketKind{"Dccp4", AF_INET, SOCK_DCCP, IPPROTO_DCCP},
                      SocketKind{"L2tpIp4", AF_INET, SOCK_DGRAM, kIpprotoL2tp},
                      SocketKind{"RawIcmp4", AF_INET, SOCK_RAW, IPPROTO_ICMP},
                      SocketKind{"RawIcmp6", AF_INET6, SOCK_RAW, IPPROTO_ICMPV6},
                      SocketKind{"RawIp4", AF_INET, SOCK_RAW, IPPROTO_RAW},
                      SocketKind{"RawUdp6", AF_INET6, SOCK_RAW, IPPROTO_UDP},
                      SocketKind{"Ping4", AF_INET, SOCK_DGRAM, IPPROTO_ICMP},
                      SocketKind{"Ping6", AF_INET6, SOCK_DGRAM, IPPROTO_ICMPV6}),
    [](const ::testing::TestParamInfo<SocketKind>& i) { return std::string(i.param.name); });

// ---- what stays open ----

class Admitted : public SandboxTest, public ::testing::WithParamInterface<SocketKind> {};

TEST_P(Admitted, OpensInSandbox) {
    const SocketKind k = GetParam();
    EXPECT_EQ(in_sandbox([k] { return try_socket(k.family, k.type, k.protocol); }), 0) << kind_text(k);
    for (auto& e : drain_events()) EXPECT_NE(e.kind, REDIR_EV_SOCKET) << "an admitted socket left a refusal event";
}

INSTANTIATE_TEST_SUITE_P(Socket, Admitted,
                         ::testing::Values(SocketKind{"TcpDefault4", AF_INET, SOCK_STREAM, 0},
                                           SocketKind{"Tcp4", AF_INET, SOCK_STREAM, IPPROTO_TCP},
                                           SocketKind{"Tcp6", AF_INET6, SOCK_STREAM, IPPROTO_TCP},
                                           SocketKind{"UdpDefault6", AF_INET6, SOCK_DGRAM, 0},
                                           SocketKind{"Udp4", AF_INET, SOCK_DGRAM, IPPROTO_UDP},
                                           SocketKind{"Unix", AF_UNIX, SOCK_STREAM, 0},
                                           SocketKind{"UnixDgram", AF_UNIX, SOCK_DGRAM, 0},
                                           SocketKind{"NetlinkRoute", AF_NETLINK, SOCK_RAW, 0}),
                         [](const ::testing::TestParamInfo<SocketKind>& i) { return std::string(i.param.name); });

// ---- other families: only the lsm_cgroup program can refuse them ----

class OtherFamilyRefused : public SandboxTest, public ::testing::WithParamInterface<SocketKind> {};

TEST_P(OtherFamilyRefused, RefusedInSandboxWhereKernelRunsLsmCgroup) {
    const SocketKind k = GetParam();
    const auto& lsm = dp_->lsm_probe();
    if (lsm.state != loader::LsmCgroup::enforced)
        GTEST_SKIP() << "lsm_cgroup " << loader::to_string(lsm.state) << ": " << lsm.detail;
    int out = outside([k] { return try_socket(k.family, k.type, k.protocol); });
    if (out != 0)
        GTEST_SKIP() << kind_text(k) << " fails outside any sandbox on this kernel too (" << std::strerror(out) << ")";
    EXPECT_EQ(in_sandbox([k] { return try_socket(k.family, k.type, k.protocol); }), EPERM) << kind_text(k);
    size_t matching = 0;
    for (auto& e : drain_events())
        matching += e.kind == REDIR_EV_SOCKET && e.family == k.family && e.sock_type == k.type;
    EXPECT_EQ(matching, 1u);
}

INSTANTIATE_TEST_SUITE_P(Socket, OtherFamilyRefused,
                         ::testing::Values(SocketKind{"PacketRaw", AF_PACKET, SOCK_RAW, htons(ETH_P_ALL)},
                                           SocketKind{"PacketDgram", AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP)},
                                           SocketKind{"Vsock", AF_VSOCK, SOCK_STREAM, 0},
                                           SocketKind{"Xdp", AF_XDP, SOCK_RAW, 0}),
                         [](const ::testing::TestParamInfo<SocketKind>& i) { return std::string(i.param.name); });

// The loader loads the LSM program exactly when the probe says the kernel
// runs it; then a link for it is pinned next to the others.
TEST_F(SandboxTest, LsmProgramAttachedExactlyWhenKernelRunsIt) {
    const auto& lsm = dp_->lsm_probe();
    EXPECT_EQ(dp_->lsm_available(), lsm.state == loader::LsmCgroup::enforced);
    bool pinned = std::filesystem::exists(bpffs_ + "/links/" +
                                          std::to_string(loader::open_cgroup(cg_->path()).id) + "/lsm_socket_create");
    EXPECT_EQ(pinned, lsm.state == loader::LsmCgroup::enforced) << lsm.detail;
    EXPECT_FALSE(lsm.detail.empty());
}

}  // namespace

namespace {

// A sandbox that floods the ring buffer (nobody reading) loses events; the
// loss is counted against that sandbox, so the agent can say which one.
TEST_F(SandboxTest, EventsLostToAFullRingBufferAreCountedPerSandbox) {
    auto before = dp_->counters()[REDIR_CNT_EVENTS_DROPPED];
    // 1 MiB of 80-byte records fills after ~13k refusals; the agent side
    // (this process) does not read while the child runs.
    int rc = in_sandbox([] {
        for (int i = 0; i < 40000; i++)
            if (try_socket(AF_INET, SOCK_RAW, IPPROTO_ICMP) != EPERM) return 1;
        return 0;
    });
    EXPECT_EQ(rc, 0);
    uint64_t drops = dp_->event_drops(cgroup_id());
    EXPECT_GT(drops, 0u);
    EXPECT_EQ(dp_->counters()[REDIR_CNT_EVENTS_DROPPED] - before, drops);
    drain_events();
}

}  // namespace
