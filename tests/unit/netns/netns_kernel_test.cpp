// userspace/netns against the real kernel, inside the test's own network
// namespace: sandbox namespace + veth + routes, the default-route gateway, and
// the egress table (masquerade, no host addresses, no other sandbox).
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "common/error.hpp"
#include "common/fd.hpp"
#include "netns/forwarding.hpp"
#include "netns/masquerade.hpp"
#include "netns/namespace.hpp"
#include "netns/rtnl.hpp"

namespace redir::netns {
namespace {

using namespace std::chrono_literals;

bool eventually(const auto& pred, std::chrono::milliseconds limit = 5000ms) {
    auto end = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
        if (std::chrono::steady_clock::now() >= end) return false;
        std::this_thread::sleep_for(10ms);
    }
    return true;
}

sockaddr_in v4(const std::string& addr, uint16_t port) {
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    ::inet_pton(AF_INET, addr.c_str(), &sa.sin_addr);
    return sa;
}

// A TCP connect from inside NS: 0, the errno, or ETIMEDOUT after LIMIT (a
// dropped SYN gets no answer at all).
int connect_from(const Namespace& ns, const std::string& addr, uint16_t port, int limit_ms = 700) {
    UniqueFd s;
    {
        Inside in(ns);
        s.reset(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    }
    auto sa = v4(addr, port);
    if (::connect(s.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0) return 0;
    if (errno != EINPROGRESS) return errno;
    pollfd p{s.get(), POLLOUT, 0};
    if (::poll(&p, 1, limit_ms) != 1) return ETIMEDOUT;
    int err = 0;
    socklen_t len = sizeof(err);
    ::getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    return err;
}

struct Listener {
    UniqueFd fd;
    uint16_t port = 0;
    Listener(const Namespace& ns, const std::string& addr) {
        Inside in(ns);
        fd.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        auto sa = v4(addr, 0);
        EXPECT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0) << std::strerror(errno);
        EXPECT_EQ(::listen(fd.get(), 16), 0);
        socklen_t len = sizeof(sa);
        ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&sa), &len);
        port = ntohs(sa.sin_port);
    }
    // Address of the next peer that connected (empty if none within a second).
    std::string peer() {
        pollfd p{fd.get(), POLLIN, 0};
        if (::poll(&p, 1, 1000) != 1) return "";
        sockaddr_in sa{};
        socklen_t len = sizeof(sa);
        UniqueFd c(::accept(fd.get(), reinterpret_cast<sockaddr*>(&sa), &len));
        char buf[INET_ADDRSTRLEN];
        return ::inet_ntop(AF_INET, &sa.sin_addr, buf, sizeof(buf));
    }
};

std::string unique(const char* tag) {
    static int n = 0;
    return std::string(tag) + std::to_string(::getpid() % 10000) + "x" + std::to_string(n++);
}

// A sandbox namespace joined to this one by a veth pair: host end HOST_IF
// with HOST/30, sandbox end eth0 with SANDBOX/30 and a default route via HOST.
struct Sandbox {
    Namespace ns = Namespace::create_anonymous();
    std::string host_if = unique("rt");
    Sandbox(const std::string& host, const std::string& sandbox) {
        Rtnl here;
        here.add_veth(host_if, "eth0", ns);
        here.add_address(host_if, host + "/30");
        here.set_up(host_if);
        Rtnl inside(ns);
        inside.set_up("lo");
        inside.add_address("eth0", sandbox + "/30");
        inside.set_up("eth0");
        inside.add_default_route("eth0", host);
        inside.wait_operational("eth0");
        here.wait_operational(host_if);
    }
    // At once (namespace teardown is asynchronous): the next test reuses the addresses.
    ~Sandbox() { Rtnl().delete_link(host_if); }
};

TEST(Namespace, AnonymousIsNewAndNotEntered) {
    auto before = Namespace::current().cookie();
    auto ns = Namespace::create_anonymous();
    EXPECT_NE(ns.cookie(), before);
    EXPECT_EQ(Namespace::current().cookie(), before) << "create_anonymous left the caller in the new namespace";
    EXPECT_EQ(Namespace::open(ns.path()).cookie(), ns.cookie()) << ns.path();
}

TEST(Namespace, NamedLivesUnderRunNetnsUntilReleased) {
    std::string name = unique("redir-test-");
    std::string path = "/run/netns/" + name;
    uint64_t cookie;
    {
        auto ns = Namespace::create_named(name);
        EXPECT_EQ(ns.path(), path);
        cookie = ns.cookie();
        EXPECT_EQ(Namespace::open(path).cookie(), cookie);
        EXPECT_THROW(Namespace::create_named(name), Error) << "a second namespace under the same name";
    }
    EXPECT_FALSE(std::filesystem::exists(path));
    EXPECT_THROW(Namespace::create_named("../etc"), Error);
}

// The veth's host end belongs to no process: it must vanish when the last
// holder of the sandbox namespace lets go (what makes SIGKILL of run clean).
TEST(Veth, DiesWithItsNamespace) {
    std::string host_if = unique("rt");
    {
        auto ns = Namespace::create_anonymous();
        Rtnl().add_veth(host_if, "eth0", ns);
        EXPECT_TRUE(Rtnl().has_link(host_if));
    }
    EXPECT_TRUE(eventually([&] { return !Rtnl().has_link(host_if); })) << host_if << " outlived its namespace";
}

TEST(Veth, SandboxReachesTheHostEndThroughTheRoute) {
    Sandbox sb("192.0.2.5", "192.0.2.6");
    auto here = Namespace::current();
    Listener l(here, "192.0.2.5");
    EXPECT_EQ(connect_from(sb.ns, "192.0.2.5", l.port), 0);
    EXPECT_EQ(l.peer(), "192.0.2.6");
}

TEST(Gateway, IsTheDefaultRoutesGatewayIpv4First) {
    Sandbox sb("192.0.2.9", "192.0.2.10");
    EXPECT_EQ(default_gateways(sb.ns.path()), std::vector<std::string>{"192.0.2.9"});
    Rtnl inside(sb.ns);
    inside.add_address("eth0", "2001:db8:9::2/64");
    inside.add_default_route("eth0", "2001:db8:9::1");
    EXPECT_EQ(default_gateways(sb.ns.path()), (std::vector<std::string>{"192.0.2.9", "2001:db8:9::1"}));
}

TEST(Gateway, NoneWithoutADefaultRoute) {
    auto ns = Namespace::create_anonymous();
    EXPECT_TRUE(default_gateways(ns.path()).empty());
    EXPECT_THROW(default_gateways("/nonexistent/netns"), Error);
}

// The agent opens a sandbox's namespace once at attach (agent/netns_target.cpp)
// and looks up its gateways and the host's veth end through that one
// descriptor: repointing the path (a /proc/PID path after PID reuse, a
// replaced bind mount) after the open must not move the lookups elsewhere.
TEST(HostPeer, FollowsTheOpenNamespaceNotItsPath) {
    Sandbox sb("192.0.2.17", "192.0.2.18");
    const std::string link = "/tmp/" + unique("nslink");
    std::filesystem::create_symlink(sb.ns.path(), link);
    const auto opened = Namespace::open(link);
    const int host_end = Rtnl().ifindex(sb.host_if);
    EXPECT_EQ(host_peer(opened, host_end), host_end);
    auto other = Namespace::create_anonymous();
    std::filesystem::remove(link);
    std::filesystem::create_symlink(other.path(), link);
    EXPECT_TRUE(default_gateways(link).empty()) << "the path names the other namespace now";
    EXPECT_EQ(host_peer(opened, host_end), host_end);
    EXPECT_EQ(default_gateways(opened), std::vector<std::string>{"192.0.2.17"});
    EXPECT_EQ(host_peer(opened, host_end + 1000), 0) << "an interface that is not the sandbox's veth end";
    EXPECT_EQ(host_peer(other, host_end), 0) << "a namespace without a veth to this one";
    std::filesystem::remove(link);
}

TEST(Forwarding, PerInterface) {
    Sandbox sb("192.0.2.13", "192.0.2.14");
    EXPECT_FALSE(forwarding_enabled(sb.host_if));
    EXPECT_TRUE(enable_forwarding(sb.host_if));
    EXPECT_TRUE(forwarding_enabled(sb.host_if));
    EXPECT_FALSE(enable_forwarding(sb.host_if)) << "second enable reported a change";
    EXPECT_FALSE(forwarding_enabled("lo")) << "another interface changed";
    EXPECT_THROW(enable_forwarding("../all"), Error);
}

// An "internet" namespace beyond this one: 192.0.2.200 on its lo, reached
// through a veth 192.0.2.128/30 — the sandbox's traffic is forwarded there.
struct Internet {
    Namespace ns = Namespace::create_anonymous();
    std::string uplink = unique("up");
    Internet() {
        Rtnl here;
        here.add_veth(uplink, "eth0", ns);
        here.add_address(uplink, "192.0.2.129/30");
        here.set_up(uplink);
        Rtnl inside(ns);
        inside.set_up("lo");
        inside.add_address("lo", "192.0.2.200/32");
        inside.add_address("eth0", "192.0.2.130/30");
        inside.set_up("eth0");
        inside.add_default_route("eth0", "192.0.2.129");
        inside.wait_operational("eth0");
        here.wait_operational(uplink);
        Rtnl().add_default_route(uplink, "192.0.2.130");
    }
    // At once (namespace teardown is asynchronous): the next test adds the same route.
    ~Internet() { Rtnl().delete_link(uplink); }
};

struct Egress : ::testing::Test {
    Internet net;
    Sandbox sb{"192.0.2.17", "192.0.2.18"};
    Sandbox other{"192.0.2.21", "192.0.2.22"};
    EgressPlan plan() {
        return {unique("redir_test_"), sb.host_if, "192.0.2.16/30", "192.0.2.17", "192.0.2.0/25"};
    }
    void forward() {
        enable_forwarding(sb.host_if);
        enable_forwarding(other.host_if);
        enable_forwarding(net.uplink);
    }
};

TEST_F(Egress, AllowedEgressIsMasqueraded) {
    forward();
    Listener server(net.ns, "192.0.2.200");
    {
        Masquerade m(plan());
        EXPECT_TRUE(m.kernel_owned()) << "Linux 5.12+ has owner tables";
        EXPECT_NE(nft_list_tables().find(m.table()), std::string::npos);
        ASSERT_EQ(connect_from(sb.ns, "192.0.2.200", server.port), 0);
        EXPECT_EQ(server.peer(), "192.0.2.129") << "the internet saw the sandbox's own address";
    }
    // Without the table the same traffic leaves unmasqueraded: the check above can fail.
    ASSERT_EQ(connect_from(sb.ns, "192.0.2.200", server.port), 0);
    EXPECT_EQ(server.peer(), "192.0.2.18");
}

TEST_F(Egress, HostsOtherAddressesAndOtherSandboxesAreUnreachable) {
    forward();
    auto here = Namespace::current();
    Listener agent(here, "192.0.2.17");
    Listener host_other(here, "203.0.113.1");
    Listener neighbour(other.ns, "192.0.2.22");
    // Reachable before: each refusal below is the table's doing.
    EXPECT_EQ(connect_from(sb.ns, "203.0.113.1", host_other.port), 0);
    host_other.peer();
    EXPECT_EQ(connect_from(sb.ns, "192.0.2.22", neighbour.port), 0);
    neighbour.peer();
    Masquerade m(plan());
    EXPECT_EQ(connect_from(sb.ns, "192.0.2.17", agent.port), 0) << "the agent's address must stay reachable";
    EXPECT_EQ(connect_from(sb.ns, "203.0.113.1", host_other.port), ETIMEDOUT);
    EXPECT_EQ(connect_from(sb.ns, "192.0.2.22", neighbour.port), ETIMEDOUT);
    // Nor can the outside open a connection into the sandbox.
    Listener inside(sb.ns, "192.0.2.18");
    EXPECT_EQ(connect_from(net.ns, "192.0.2.18", inside.port), ETIMEDOUT);
}

TEST_F(Egress, TableIsRemovedWhenItsOwnerIsKilled) {
    auto p = plan();
    int ready[2];
    ASSERT_EQ(::pipe(ready), 0);
    pid_t kid = ::fork();
    ASSERT_GE(kid, 0);
    if (kid == 0) {
        Masquerade m(p);
        [[maybe_unused]] auto w = ::write(ready[1], "r", 1);
        ::pause();
        ::_exit(0);
    }
    char c;
    ASSERT_EQ(::read(ready[0], &c, 1), 1);
    EXPECT_NE(nft_list_tables().find(p.table), std::string::npos);
    ::kill(kid, SIGKILL);
    ::waitpid(kid, nullptr, 0);
    EXPECT_TRUE(eventually([&] { return nft_list_tables().find(p.table) == std::string::npos; }))
        << "table " << p.table << " outlived its SIGKILLed owner";
    ::close(ready[0]);
    ::close(ready[1]);
}

TEST(EgressRuleset, NamesEveryPiece) {
    std::string r = egress_ruleset({"t", "vif", "10.0.0.0/30", "10.0.0.1", "10.0.0.0/16"}, true);
    EXPECT_NE(r.find("add table inet t { flags owner; }"), std::string::npos) << r;
    EXPECT_NE(r.find("iifname \"vif\" ip daddr != 10.0.0.1 drop"), std::string::npos) << r;
    EXPECT_NE(r.find("ip saddr 10.0.0.0/30 oifname != \"vif\" masquerade"), std::string::npos) << r;
    EXPECT_EQ(egress_ruleset({"t", "vif", "a", "b", "c"}, false).find("owner"), std::string::npos);
    // No IPv6 for the sandbox: every IPv6 packet from it is dropped.
    EXPECT_NE(r.find("iifname \"vif\" meta nfproto ipv6 drop"), std::string::npos) << r;
    EXPECT_NE(r.find("forward iifname \"vif\" ip saddr != 10.0.0.0/30 drop"), std::string::npos) << r;
}

TEST(EgressRuleset, Ipv6PiecesWhenTheSandboxHasIpv6) {
    EgressPlan p{"t", "vif", "10.0.0.0/30", "10.0.0.1", "10.0.0.0/16", "fd00:0:0:1::/64", "fd00:0:0:1::1", "fd00::/48"};
    std::string r = egress_ruleset(p, true);
    EXPECT_EQ(r.find("nfproto ipv6 drop"), std::string::npos) << r;
    EXPECT_NE(r.find("input iifname \"vif\" icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert }"), std::string::npos) << r;
    EXPECT_NE(r.find("input iifname \"vif\" ip6 daddr != fd00:0:0:1::1 drop"), std::string::npos) << r;
    EXPECT_NE(r.find("forward iifname \"vif\" ip6 saddr != fd00:0:0:1::/64 drop"), std::string::npos) << r;
    EXPECT_NE(r.find("forward iifname \"vif\" ip6 daddr fd00::/48 drop"), std::string::npos) << r;
    EXPECT_NE(r.find("ip6 saddr fd00:0:0:1::/64 oifname != \"vif\" masquerade"), std::string::npos) << r;
}

}  // namespace
}  // namespace redir::netns
