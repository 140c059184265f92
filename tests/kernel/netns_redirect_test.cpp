// Sandboxes in their own network namespaces (containers, pods, run --netns):
// each attachment carries its own redirect target (the agent's address on the
// sandbox's veth), and the original-destination record is keyed with the
// sandbox socket's namespace, so two namespaces using identical addresses and
// ports never see each other's records. Runs in main()'s private namespace
// (the "agent's"), with two child namespaces joined to it by veth pairs.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "common/addr.hpp"
#include "common/fd.hpp"
#include "kernel_main.hpp"
#include "netns/namespace.hpp"
#include "netns/rtnl.hpp"
#include "sandbox_fixture.hpp"

using namespace redir;
using kerneltest::sockaddr_for;

namespace {

// Both sandboxes use the same addresses; the agent side of both veths too.
constexpr const char* kAgentAddr = "192.0.2.1";
constexpr const char* kSandboxAddr = "192.0.2.2";
constexpr const char* kResolver = "192.0.2.53";  // what the sandboxes' resolv.conf would name
constexpr const char* kAgentAddr6 = "2001:db8:77::1";
constexpr const char* kSandboxAddr6 = "2001:db8:77::2";

// One sandbox namespace joined to ours by a veth pair HOST_IF <-> eth0.
struct SandboxNet {
    std::string host_if;
    netns::Namespace ns;
    uint64_t cookie = 0;
    int ifindex = 0;
};

// Built once per binary: namespaces and veths live until exit.
struct Nets {
    std::optional<SandboxNet> a, b;
    std::string error;  // non-empty: this host cannot build them (the cases skip, with this reason)
};

void write_sysctl(const std::string& path, const char* v) {
    std::ofstream f(path);
    f << v;
}

SandboxNet make_sandbox_net(const std::string& host_if) {
    SandboxNet n{host_if, netns::Namespace::create_anonymous()};
    netns::Rtnl here;
    here.add_veth(host_if, "eth0", n.ns);
    here.add_address(host_if, std::string(kAgentAddr) + "/24");
    here.add_address(host_if, std::string(kAgentAddr6) + "/64");
    here.set_up(host_if);
    n.ifindex = here.ifindex(host_if);
    // Identical prefixes on two interfaces: the reverse-path filter would drop
    // what arrives on the second one; the listeners are bound to a device instead.
    write_sysctl("/proc/sys/net/ipv4/conf/" + host_if + "/rp_filter", "0");
    netns::Rtnl in(n.ns);
    in.set_up("lo");
    in.add_address("eth0", std::string(kSandboxAddr) + "/24");
    in.add_address("eth0", std::string(kSandboxAddr6) + "/64");
    in.set_up("eth0");
    in.wait_operational("eth0");
    in.add_default_route("eth0", kAgentAddr);
    n.cookie = n.ns.cookie();
    return n;
}

Nets& nets() {
    static Nets n = [] {
        Nets out;
        try {
            write_sysctl("/proc/sys/net/ipv4/conf/all/rp_filter", "0");
            out.a.emplace(make_sandbox_net("rk-a"));
            out.b.emplace(make_sandbox_net("rk-b"));
        } catch (const std::exception& e) {
            out.error = std::string("cannot build veth-joined namespaces here: ") + e.what();
        }
        return out;
    }();
    return n;
}

// A socket of TYPE on ADDR:PORT bound to device IFNAME (PORT 0 = any); -1 on failure.
int bound_socket(int type, const std::string& addr, uint16_t& port, const std::string& ifname) {
    socklen_t len = 0;
    sockaddr_storage ss = sockaddr_for(addr, port, len);
    int fd = ::socket(ss.ss_family, type | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    if (ss.ss_family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (::setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, ifname.c_str(), ifname.size()) != 0 ||
        ::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || (type == SOCK_STREAM && ::listen(fd, 1024) != 0)) {
        ::close(fd);
        return -1;
    }
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    addr_from_sockaddr(reinterpret_cast<sockaddr*>(&ss), &port);
    return fd;
}

// The 4-tuple the agent sees on an accepted socket, keyed with COOKIE.
redir_tuple_key accepted_key(int fd, uint64_t cookie) {
    sockaddr_storage peer{}, local{};
    socklen_t pl = sizeof(peer), ll = sizeof(local);
    ::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll);
    redir_tuple_key k{};
    k.peer_addr = *addr_from_sockaddr(reinterpret_cast<sockaddr*>(&peer), &k.peer_port);
    k.local_addr = *addr_from_sockaddr(reinterpret_cast<sockaddr*>(&local), &k.local_port);
    k.netns_cookie = cookie;
    return k;
}

// In a forked child: join NS.
bool enter(const netns::Namespace& ns) { return ::setns(ns.fd(), CLONE_NEWNET) == 0; }

// Connects from SRC_PORT (0 = any) to DST:PORT; the connected fd, or -errno.
int connect_from(const std::string& src, uint16_t src_port, const std::string& dst, uint16_t port) {
    socklen_t len = 0;
    sockaddr_storage to = sockaddr_for(dst, port, len);
    int fd = ::socket(to.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (src_port) {
        int one = 1;
        ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        socklen_t sl = 0;
        sockaddr_storage from = sockaddr_for(src, src_port, sl);
        if (::bind(fd, reinterpret_cast<sockaddr*>(&from), sl) != 0) {
            int e = errno;
            ::close(fd);
            return -e;
        }
    }
    if (::connect(fd, reinterpret_cast<sockaddr*>(&to), len) != 0) {
        int e = errno;
        ::close(fd);
        return -e;
    }
    return fd;
}

class NetnsRedirectTest : public kerneltest::SandboxTest {
protected:
    void SetUp() override {
        if (!nets().error.empty()) GTEST_SKIP() << nets().error;
        SandboxTest::SetUp();
        cg_b_ = std::make_unique<testsupport::TempCgroup>("ktest-b");
        redir_attach_val v{};
        v.policy_id = policy_id_;
        dp_->attach(loader::open_cgroup(cg_b_->path()), v);
        // Listeners of the agent's side, one per veth, same address and port.
        relay_a_ = UniqueFd(bound_socket(SOCK_STREAM, kAgentAddr, relay_port_, net_a().host_if));
        relay_b_ = UniqueFd(bound_socket(SOCK_STREAM, kAgentAddr, relay_port_, net_b().host_if));
        ASSERT_TRUE(relay_a_ && relay_b_) << "cannot bind the relay listeners on both veths";
        cfg_before_ = dp_->config();
        redir_config cfg = cfg_before_;
        cfg.relay_port = relay_port_;
        dp_->set_config(cfg);
    }

    void TearDown() override {
        if (!cg_b_) return;
        dp_->set_config(cfg_before_);
        dp_->detach(loader::open_cgroup(cg_b_->path()).id);
        cg_b_.reset();
        SandboxTest::TearDown();
    }

    static SandboxNet& net_a() { return *nets().a; }
    static SandboxNet& net_b() { return *nets().b; }

    // Both attachments redirect to the agent's address on their own veth.
    void set_targets(uint16_t dns_port_a = 0, uint16_t dns_port_b = 0) {
        for (auto [path, dns] : {std::pair{cg_->path(), dns_port_a}, std::pair{cg_b_->path(), dns_port_b}}) {
            redir_attach_val v{};
            v.policy_id = policy_id_;
            v.dns_port = dns;
            v.target4 = *addr_parse(kAgentAddr);
            v.target6 = *addr_parse(kAgentAddr6);
            dp_->set_attachment(loader::open_cgroup(path).id, v);
        }
    }

    // Inspect (REDIRECT to the relay) tcp ports LO..HI of ADDR/PREFIX.
    void inspect(const std::string& addr, int prefix, uint16_t lo, uint16_t hi) {
        put_range(addr, prefix, lo, hi, REDIR_VERDICT_REDIRECT);
    }

    std::unique_ptr<testsupport::TempCgroup> cg_b_;
    UniqueFd relay_a_, relay_b_;
    uint16_t relay_port_ = 0;
    redir_config cfg_before_{};
};

// Connection I of sandbox A goes to 203.0.113.(I%250+1):1000+I, of B to
// 198.51.100.(I*7%250+1):3000+I; both from source port 20000+I of the same
// address, so every pair reaches the agent with the very same 4-tuple.
std::string dest_of(bool b, int i) {
    return b ? "198.51.100." + std::to_string(i * 7 % 250 + 1) : "203.0.113." + std::to_string(i % 250 + 1);
}
uint16_t port_of(bool b, int i) { return static_cast<uint16_t>((b ? 3000 : 1000) + i); }

TEST_F(NetnsRedirectTest, IdenticalTuplesInTwoNamespacesKeepTheirOwnOriginalDestinations) {
    set_targets();
    inspect("203.0.113.0", 96 + 24, 1000, 1999);
    inspect("198.51.100.0", 96 + 24, 3000, 3999);
    constexpr int N = 200;

    std::atomic<int> ok_children{0};
    std::vector<std::thread> waiters;
    for (int i = 0; i < N; i++) {
        for (bool b : {false, true}) {
            waiters.emplace_back([&, i, b] {
                const auto& n = b ? net_b() : net_a();
                const std::string cg = b ? cg_b_->path() : cg_->path();
                int rc = testsupport::run_in_cgroup(cg, [&n, i, b] {
                    if (!enter(n.ns)) return 9;
                    int fd = connect_from(kSandboxAddr, static_cast<uint16_t>(20000 + i), dest_of(b, i), port_of(b, i));
                    if (fd < 0) return 10;
                    sockaddr_storage ss{};
                    socklen_t len = sizeof(ss);
                    ::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len);
                    uint16_t pp = 0;
                    auto pa = addr_from_sockaddr(reinterpret_cast<sockaddr*>(&ss), &pp);
                    if (!pa || addr_to_string(*pa) != dest_of(b, i) || pp != port_of(b, i)) return 11;
                    char c = 0;
                    if (::read(fd, &c, 1) != 1) return 12;
                    return c == (b ? 'b' : 'a') ? 0 : 13;
                });
                if (rc == 0) ok_children++;
            });
        }
    }

    const uint64_t cg_a = cgroup_id(), cg_b = loader::open_cgroup(cg_b_->path()).id;
    std::map<bool, int> correct;
    std::map<bool, std::set<uint16_t>> peer_ports;
    int accepted = 0, unknown = 0;
    while (accepted < 2 * N) {
        pollfd pf[2] = {{relay_a_.get(), POLLIN, 0}, {relay_b_.get(), POLLIN, 0}};
        if (::poll(pf, 2, 10000) <= 0) break;
        for (int side = 0; side < 2; side++) {
            if (!(pf[side].revents & POLLIN)) continue;
            bool b = side == 1;
            UniqueFd c(::accept4(pf[side].fd, nullptr, nullptr, SOCK_CLOEXEC));
            if (!c) continue;
            accepted++;
            // The listener tells which namespace the client is in.
            auto k = accepted_key(c.get(), b ? net_b().cookie : net_a().cookie);
            auto v = dp_->take_origdst(k);
            if (!v) {
                unknown++;
                continue;
            }
            int i = k.peer_port - 20000;
            peer_ports[b].insert(k.peer_port);
            if (addr_to_string(v->orig_addr) == dest_of(b, i) && v->orig_port == port_of(b, i) &&
                v->cgroup_id == (b ? cg_b : cg_a))
                correct[b]++;
            EXPECT_FALSE(dp_->take_origdst(k).has_value()) << "an entry is read once";
            char reply = b ? 'b' : 'a';
            (void)!::write(c.get(), &reply, 1);
        }
    }
    for (auto& t : waiters) t.join();
    EXPECT_EQ(accepted, 2 * N);
    EXPECT_EQ(unknown, 0);
    EXPECT_EQ(correct[false], N) << "sandbox A's original destinations";
    EXPECT_EQ(correct[true], N) << "sandbox B's original destinations";
    // The property under test needs the collisions: every tuple came from both namespaces.
    EXPECT_EQ(peer_ports[false], peer_ports[true]);
    EXPECT_EQ(ok_children.load(), 2 * N);
}

// IPv6: the attachment's v6 target; the record keeps the namespace too.
TEST_F(NetnsRedirectTest, Ipv6RedirectLandsOnTheAttachmentsV6Target) {
    set_targets();
    inspect("2001:db8:99::", 48, 1000, 1999);
    uint16_t port = relay_port_;
    UniqueFd l6(bound_socket(SOCK_STREAM, kAgentAddr6, port, net_a().host_if));
    ASSERT_TRUE(l6) << "cannot bind the v6 relay listener";
    std::thread child([&] {
        EXPECT_EQ(testsupport::run_in_cgroup(cg_->path(),
                                             [] {
                                                 if (!enter(net_a().ns)) return 9;
                                                 int fd = -1;
                                                 // The first neighbour discovery may race the link coming up.
                                                 for (int t = 0; t < 100 && fd < 0; t++) {
                                                     fd = connect_from("", 0, "2001:db8:99::7", 1234);
                                                     if (fd < 0) ::usleep(20000);
                                                 }
                                                 if (fd < 0) return 10;
                                                 char c = 0;
                                                 return ::read(fd, &c, 1) == 1 && c == 'k' ? 0 : 12;
                                             }),
                  0);
    });
    pollfd pf{l6.get(), POLLIN, 0};
    ASSERT_GT(::poll(&pf, 1, 10000), 0) << "no redirected IPv6 connection arrived on the v6 target";
    UniqueFd c(::accept4(l6.get(), nullptr, nullptr, SOCK_CLOEXEC));
    auto v = dp_->take_origdst(accepted_key(c.get(), net_a().cookie));
    ASSERT_TRUE(v.has_value());
    EXPECT_EQ(addr_to_string(v->orig_addr), "2001:db8:99::7");
    EXPECT_EQ(v->orig_port, 1234);
    (void)!::write(c.get(), "k", 1);
    child.join();
}

// DNS: whatever resolver the sandbox names, its queries reach its own
// responder on the agent's side of its veth; answers come back from the
// resolver it asked (UDP: recvmsg hook; TCP: getpeername hook).
TEST_F(NetnsRedirectTest, DnsToAnyResolverReachesTheSandboxsResponderAndAnswersComeFromTheResolver) {
    uint16_t dport = 0;
    UniqueFd udp(bound_socket(SOCK_DGRAM, kAgentAddr, dport, net_a().host_if));
    UniqueFd tcp(bound_socket(SOCK_STREAM, kAgentAddr, dport, net_a().host_if));
    ASSERT_TRUE(udp && tcp) << "cannot bind the test responder";
    set_targets(dport, dport);
    std::atomic<bool> stop{false};
    std::thread responder([&] {
        // Echoes each datagram back, prefixed with 'R'.
        while (!stop) {
            pollfd pf{udp.get(), POLLIN, 0};
            if (::poll(&pf, 1, 100) <= 0) continue;
            char buf[512];
            sockaddr_storage from{};
            socklen_t fl = sizeof(from);
            ssize_t n = ::recvfrom(udp.get(), buf + 1, sizeof(buf) - 1, 0, reinterpret_cast<sockaddr*>(&from), &fl);
            if (n <= 0) continue;
            buf[0] = 'R';
            ::sendto(udp.get(), buf, n + 1, 0, reinterpret_cast<sockaddr*>(&from), fl);
        }
    });
    int rc = testsupport::run_in_cgroup(cg_->path(), [] {
        if (!enter(net_a().ns)) return 9;
        socklen_t len = 0;
        sockaddr_storage to = sockaddr_for(kResolver, 53, len);
        UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
        if (::sendto(s.get(), "q", 1, 0, reinterpret_cast<sockaddr*>(&to), len) != 1) return 10;
        pollfd pf{s.get(), POLLIN, 0};
        if (::poll(&pf, 1, 5000) <= 0) return 11;
        char buf[16];
        sockaddr_storage from{};
        socklen_t fl = sizeof(from);
        if (::recvfrom(s.get(), buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&from), &fl) != 2 || buf[0] != 'R')
            return 12;
        uint16_t fp = 0;
        auto fa = addr_from_sockaddr(reinterpret_cast<sockaddr*>(&from), &fp);
        if (!fa || addr_to_string(*fa) != kResolver || fp != 53) return 13;  // the answer names the resolver asked
        // DNS over TCP: the connection lands on the responder, and still names the resolver.
        int fd = connect_from("", 0, kResolver, 53);
        if (fd < 0) return 14;
        sockaddr_storage peer{};
        socklen_t pl = sizeof(peer);
        ::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl);
        auto pa = addr_from_sockaddr(reinterpret_cast<sockaddr*>(&peer), &fp);
        ::close(fd);
        return pa && addr_to_string(*pa) == kResolver && fp == 53 ? 0 : 15;
    });
    stop = true;
    responder.join();
    EXPECT_EQ(rc, 0);
    pollfd pf{tcp.get(), POLLIN, 0};
    ASSERT_GT(::poll(&pf, 1, 5000), 0) << "the TCP query did not reach the sandbox's responder";
    UniqueFd c(::accept4(tcp.get(), nullptr, nullptr, SOCK_CLOEXEC));
    auto v = dp_->take_origdst(accepted_key(c.get(), net_a().cookie));
    ASSERT_TRUE(v.has_value());
    EXPECT_EQ(addr_to_string(v->orig_addr), kResolver);
    EXPECT_EQ(v->orig_port, 53);
    EXPECT_EQ(v->reason, REDIR_REASON_DNS);
}

// Escape attempts from inside a sandbox namespace against the agent's side
// of its veth: even with a rule that allows the whole link subnet, direct
// (not redirected) TCP and UDP to the agent's address are refused in the
// kernel; a process there that escaped the hooks (outside the cgroup) does
// reach the listener, but no record exists for its connection, so the
// agent's listener finds nothing to serve.
TEST_F(NetnsRedirectTest, DirectTrafficToTheAgentAddressIsRefused) {
    set_targets(4053, 4053);
    allow_all_ports("192.0.2.0", 96 + 24, REDIR_PROTO_TCP);
    allow_all_ports("192.0.2.0", 96 + 24, REDIR_PROTO_UDP);
    uint16_t rp = relay_port_;
    int rc = in_sandbox([rp] {
        if (!enter(net_a().ns)) return 9;
        int fd = connect_from("", 0, kAgentAddr, rp);
        if (fd != -EPERM) return 10;
        fd = connect_from("", 0, kAgentAddr6, rp);
        if (fd != -EPERM) return 11;
        // Another sandbox's DNS responder port on the same agent address.
        socklen_t len = 0;
        sockaddr_storage to = sockaddr_for(kAgentAddr, 4054, len);
        UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
        if (::sendto(s.get(), "q", 1, 0, reinterpret_cast<sockaddr*>(&to), len) != -1 || errno != EPERM) return 12;
        return 0;
    });
    EXPECT_EQ(rc, 0);
    bool saw = false;
    for (auto& e : drain_events())
        saw |= e.reason == REDIR_REASON_AGENT_ADDRESS && e.verdict == REDIR_VERDICT_DENY;
    EXPECT_TRUE(saw) << "the refusal is audited with reason agent-address";

    // Outside the cgroup, inside the namespace: connects, but carries no record.
    EXPECT_EQ(testsupport::run_in_cgroup("",
                                         [rp] {
                                             if (!enter(net_a().ns)) return 9;
                                             // Queued in the listener's backlog; accepted below.
                                             int fd = connect_from("", 0, kAgentAddr, rp);
                                             return fd < 0 ? 10 : 0;
                                         }),
              0);
    pollfd pf{relay_a_.get(), POLLIN, 0};
    ASSERT_GT(::poll(&pf, 1, 5000), 0);
    UniqueFd c(::accept4(relay_a_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    EXPECT_FALSE(dp_->take_origdst(accepted_key(c.get(), net_a().cookie)).has_value());
    EXPECT_FALSE(dp_->take_origdst(accepted_key(c.get(), testsupport::current_netns_cookie())).has_value());
}

// Without a v6 agent address the attachment's v6 redirects fail closed
// instead of landing on the sandbox's own loopback.
TEST_F(NetnsRedirectTest, MissingTargetFamilyFailsClosed) {
    redir_attach_val v{};
    v.policy_id = policy_id_;
    v.target4 = *addr_parse(kAgentAddr);
    dp_->set_attachment(cgroup_id(), v);
    inspect("2001:db8:99::", 48, 1000, 1999);
    EXPECT_EQ(in_sandbox([] {
                  if (!enter(net_a().ns)) return 9;
                  return connect_from("", 0, "2001:db8:99::7", 1234) == -EPERM ? 0 : 10;
              }),
              0);
}

}  // namespace

int main(int argc, char** argv) { return testsupport::kernel_test_main(argc, argv, {}); }
