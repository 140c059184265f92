// The node-side guard program (bpf/guard.bpf.c) judged frame by frame with
// BPF_PROG_TEST_RUN: the very program the datapath attached (found through
// its pinned tcx link) gets crafted IPv4/IPv6 TCP/UDP frames, fragments,
// malformed headers, tags and other ethertypes on interfaces it guards (and
// one it does not), and each verdict is what a root inside the sandbox would
// meet. Runs in a private network namespace; the interfaces are veth ends there.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <gtest/gtest.h>
#include <linux/bpf.h>
#include <unistd.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "common/addr.hpp"
#include "common/fd.hpp"
#include "kernel_main.hpp"
#include "loader/bpf_datapath.hpp"
#include "netns.hpp"
#include "netns/namespace.hpp"
#include "netns/rtnl.hpp"
#include "sandbox_fixture.hpp"

using namespace redir;

namespace {

// tc verdicts as the program returns them (tcx and classic tc alike).
constexpr int kPass = -1, kDrop = 2;

constexpr uint16_t kTerminatorPort = 18443, kPlainPort = 18080, kRelayPort = 18444, kDnsPort = 15353;
constexpr const char* kTarget4 = "10.88.0.1";
constexpr const char* kTarget6 = "fd00:88::1";
constexpr const char* kInside4 = "10.88.0.2";
constexpr const char* kInside6 = "fd00:88::2";
constexpr const char* kVip4 = "198.18.0.1";
constexpr const char* kAllowed4 = "203.0.113.80";
constexpr const char* kAllowed6 = "2001:db8::80";
constexpr const char* kDenied4 = "203.0.113.81";
constexpr const char* kDenied6 = "2001:db8::81";
constexpr const char* kClient4 = "203.0.113.90";
constexpr uint16_t kAllowedTcp = 443, kAllowedUdp = 4000;

bool g_root = false;

// ---- frames ------------------------------------------------------------------

using Bytes = std::vector<uint8_t>;

void put16(Bytes& b, uint16_t v) {
    b.push_back(v >> 8);
    b.push_back(v & 0xff);
}

void put_addr(Bytes& b, const std::string& text, bool v4) {
    auto a = addr_parse(text);
    if (!a) throw std::runtime_error("bad address in a test frame: " + text);
    b.insert(b.end(), a->b + (v4 ? 12 : 0), a->b + 16);
}

Bytes eth(uint16_t ethertype) {
    Bytes b = {0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02};  // to the host end, from the sandbox's
    put16(b, ethertype);
    return b;
}

Bytes tcp(uint16_t dport) {
    Bytes b;
    put16(b, 40000);
    put16(b, dport);
    b.insert(b.end(), {0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0});  // SYN
    return b;
}

Bytes udp(uint16_t dport) {
    Bytes b;
    put16(b, 40000);
    put16(b, dport);
    put16(b, 8 + 4);
    put16(b, 0);
    b.insert(b.end(), {'d', 'a', 't', 'a'});
    return b;
}

struct V4 {
    std::string dst;
    uint8_t proto = IPPROTO_TCP;
    Bytes l4;
    uint8_t version_ihl = 0x45;
    uint16_t frag_off = 0;
    std::optional<uint16_t> tot_len;  // default: the real length
    Bytes options;
    std::string src = kInside4;
};

Bytes ipv4(const V4& p) {
    Bytes b = eth(0x0800);
    b.push_back(p.version_ihl);
    b.push_back(0);
    put16(b, p.tot_len.value_or(20 + p.options.size() + p.l4.size()));
    put16(b, 1);
    put16(b, p.frag_off);
    b.push_back(64);
    b.push_back(p.proto);
    put16(b, 0);
    put_addr(b, p.src, true);
    put_addr(b, p.dst, true);
    b.insert(b.end(), p.options.begin(), p.options.end());
    b.insert(b.end(), p.l4.begin(), p.l4.end());
    return b;
}

struct V6 {
    std::string dst;
    uint8_t next = IPPROTO_TCP;
    Bytes payload;  // extension headers included
    uint8_t hop_limit = 64;
    std::optional<uint16_t> payload_len;
    uint8_t version = 6;
};

Bytes ipv6(const V6& p) {
    Bytes b = eth(0x86DD);
    b.insert(b.end(), {static_cast<uint8_t>(p.version << 4), 0, 0, 0});
    put16(b, p.payload_len.value_or(p.payload.size()));
    b.push_back(p.next);
    b.push_back(p.hop_limit);
    put_addr(b, kInside6, false);
    put_addr(b, p.dst, false);
    b.insert(b.end(), p.payload.begin(), p.payload.end());
    return b;
}

Bytes cat(Bytes a, const Bytes& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

// A frame the guard must drop, and the reason its audit event must give.
struct Dropped {
    const char* what;
    Bytes frame;
    uint8_t reason = REDIR_REASON_UNPARSED;
};

Bytes cut(Bytes b, size_t n) {
    b.resize(n);
    return b;
}

// An IPv6 extension header of 8 bytes announcing NEXT.
Bytes ext(uint8_t next) { return {next, 0, 0, 0, 0, 0, 0, 0}; }

Bytes icmp6(uint8_t type) { return {type, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}; }

Bytes arp(uint16_t hrd, uint16_t pro, uint8_t hln, uint8_t pln, uint16_t op) {
    Bytes b = eth(0x0806);
    put16(b, hrd);
    put16(b, pro);
    b.push_back(hln);
    b.push_back(pln);
    put16(b, op);
    b.insert(b.end(), 20, 0);
    return b;
}

// Ethernet frames shorter than 60 bytes are padded on the wire: the padding
// must never be read as ports.
Bytes padded(Bytes b) {
    if (b.size() < 60) b.resize(60, 0);
    return b;
}

// ---- the interfaces ----------------------------------------------------------

// Host ends of three veth pairs in our namespace (the sandboxes' ends in one
// anonymous namespace, never used): A's and B's guarded, and one nobody guards.
struct Links {
    std::optional<netns::Namespace> far;
    int a = 0, b = 0, unguarded = 0;
    std::string error;
};

Links& links() {
    static Links l = [] {
        Links out;
        try {
            out.far.emplace(netns::Namespace::create_anonymous());
            netns::Rtnl here;
            int* slots[] = {&out.a, &out.b, &out.unguarded};
            const char* names[] = {"gk-a", "gk-b", "gk-none"};
            for (int i = 0; i < 3; i++) {
                here.add_veth(names[i], std::string("e") + std::to_string(i), *out.far);
                here.set_up(names[i]);
                *slots[i] = here.ifindex(names[i]);
            }
        } catch (const std::exception& e) {
            out.error = std::string("cannot create veth pairs here: ") + e.what();
        }
        return out;
    }();
    return l;
}

class GuardTest : public kerneltest::SandboxTest {
protected:
    void SetUp() override {
        if (!g_root) GTEST_SKIP() << "needs root (BPF, cgroups, network namespaces): run it as root";
        if (!links().error.empty()) GTEST_SKIP() << links().error;
        SandboxTest::SetUp();
        redir_config cfg{};
        cfg.agent_netns_cookie = testsupport::current_netns_cookie();
        cfg.terminator4 = *addr_parse("127.0.0.1");
        cfg.terminator6 = *addr_parse("::1");
        cfg.inference_vip4 = *addr_parse(kVip4);
        cfg.terminator_port = kTerminatorPort;
        cfg.plain_http_port = kPlainPort;
        cfg.relay_port = kRelayPort;
        dp_->set_config(cfg);

        // Sandbox A: its own namespace, redirected to the agent on its link.
        dp_->set_attachment(cgroup_id(), sandbox_entry(policy_id_, links().a));
        dp_->attach_guard(cgroup_id(), links().a);
        allow_tcp_and_udp(kAllowed4);
        allow_tcp_and_udp(kAllowed6);
        // A client named without ports (the way to let a server inside answer it).
        allow_all_ports(kClient4, 128, REDIR_PROTO_TCP);
        // The loopback too, by a rule: the guard must refuse it anyway.
        allow_all_ports("127.0.0.1", 128, REDIR_PROTO_TCP);

        // Sandbox B: a policy that allows nothing, guarded on its own link.
        b_cg_ = std::make_unique<kerneltest::TempCgroup>("ktest-guard-b");
        b_id_ = loader::open_cgroup(b_cg_->path()).id;
        dp_->attach(loader::open_cgroup(b_cg_->path()), sandbox_entry(policy_id_ + 1000, links().b));
        dp_->attach_guard(b_id_, links().b);

        prog_ = guard_program();
        drain_events();
    }

    void TearDown() override {
        if (b_cg_) dp_->detach(b_id_);
        b_cg_.reset();
        if (dp_) SandboxTest::TearDown();
    }

    // ADDR/128 allows TCP kAllowedTcp and UDP kAllowedUdp (one port set: one LPM entry per prefix).
    void allow_tcp_and_udp(const std::string& addr) {
        redir_portset ps{};
        ps.count = 2;
        ps.r[0] = {kAllowedTcp, kAllowedTcp, REDIR_PROTO_TCP, REDIR_VERDICT_ALLOW, 0};
        ps.r[1] = {kAllowedUdp, kAllowedUdp, REDIR_PROTO_UDP, REDIR_VERDICT_ALLOW, 0};
        uint32_t set = next_set_++;
        dp_->put_portset({policy_id_, set}, ps);
        redir_lpm_key k{};
        k.policy_id = policy_id_;
        k.prefixlen = 32 + 128;
        std::memcpy(k.addr, addr_parse(addr)->b, 16);
        dp_->put_lpm(k, {set, 0, 0, 0});
    }

    static redir_attach_val sandbox_entry(uint32_t policy, int ifindex) {
        redir_attach_val v{};
        v.policy_id = policy;
        v.flags = REDIR_ATTACH_F_INFERENCE;
        v.dns_port = kDnsPort;
        v.target4 = *addr_parse(kTarget4);
        v.target6 = *addr_parse(kTarget6);
        v.netns_cookie = 0x1234;  // not the agent's: a sandbox in its own namespace
        v.target_ifindex = static_cast<uint32_t>(ifindex);
        v.guard_ifindex = static_cast<uint32_t>(ifindex);
        return v;
    }

    // The program guarding A's link: the datapath's own, as attached — behind
    // its pinned tcx link, or (kernels before 6.6, no tcx) its tc filter.
    UniqueFd guard_program() {
        std::string pin = bpffs_ + "/links/" + std::to_string(cgroup_id()) + "/guard";
        UniqueFd link(bpf_obj_get(pin.c_str()));
        if (!link && errno == ENOENT) return tc_guard_program(links().a);
        if (!link) throw std::runtime_error("no guard link pinned at " + pin + ": " + std::strerror(errno));
        bpf_link_info info{};
        uint32_t len = sizeof(info);
        if (bpf_obj_get_info_by_fd(link.get(), &info, &len))
            throw std::runtime_error("cannot read the guard link's info: " + std::string(std::strerror(errno)));
        UniqueFd prog(bpf_prog_get_fd_by_id(info.prog_id));
        if (!prog) throw std::runtime_error("cannot open the guard program: " + std::string(std::strerror(errno)));
        return prog;
    }

    // The clsact fallback's filter on IFINDEX's ingress.
    static UniqueFd tc_guard_program(int ifindex) {
        LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
        LIBBPF_OPTS(bpf_tc_opts, opts, .handle = loader::kGuardTcHandle, .priority = loader::kGuardTcPriority);
        if (int err = bpf_tc_query(&hook, &opts))
            throw std::runtime_error("no guard link pinned and no guard tc filter on ifindex " +
                                     std::to_string(ifindex) + ": " + std::strerror(-err));
        UniqueFd prog(bpf_prog_get_fd_by_id(opts.prog_id));
        if (!prog) throw std::runtime_error("cannot open the guard's tc program: " + std::string(std::strerror(errno)));
        return prog;
    }

    // The verdict of the guard for FRAME arriving on IFINDEX.
    int verdict(const Bytes& frame, int ifindex) {
        __sk_buff ctx{};
        ctx.ifindex = static_cast<uint32_t>(ifindex);
        LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = frame.data(), .data_size_in = static_cast<uint32_t>(frame.size()),
                    .ctx_in = &ctx, .ctx_size_in = sizeof(ctx));
        if (bpf_prog_test_run_opts(prog_.get(), &opts) != 0)
            throw std::runtime_error("BPF_PROG_TEST_RUN of the guard failed on a frame of " +
                                     std::to_string(frame.size()) + " bytes: " + std::strerror(errno));
        return static_cast<int>(opts.retval);
    }
    int on_a(const Bytes& f) { return verdict(padded(f), links().a); }

    // Each frame of CASES (PAD: to the Ethernet minimum) dropped on A's link, for its reason.
    void expect_dropped(const std::vector<Dropped>& cases, bool pad = true) {
        for (auto& c : cases) {
            EXPECT_EQ(verdict(pad ? padded(c.frame) : c.frame, links().a), kDrop) << c.what;
            EXPECT_EQ(last_drop().reason, c.reason) << c.what;
        }
    }

    // The one "forwarded" event the last drop emitted.
    redir_event last_drop() {
        auto ev = drain_events();
        EXPECT_EQ(ev.size(), 1u) << "one dropped frame, one audit event";
        if (ev.empty()) return {};
        EXPECT_EQ(ev.back().kind, REDIR_EV_FORWARDED);
        EXPECT_EQ(ev.back().verdict, REDIR_VERDICT_DENY);
        return ev.back();
    }

    std::unique_ptr<kerneltest::TempCgroup> b_cg_;
    uint64_t b_id_ = 0;
    UniqueFd prog_;
};

TEST_F(GuardTest, AllowedTcpAndUdpPassInBothFamilies) {
    EXPECT_EQ(on_a(ipv4({kAllowed4, IPPROTO_TCP, tcp(kAllowedTcp)})), kPass);
    EXPECT_EQ(on_a(ipv4({kAllowed4, IPPROTO_UDP, udp(kAllowedUdp)})), kPass);
    EXPECT_EQ(on_a(ipv6({kAllowed6, IPPROTO_TCP, tcp(kAllowedTcp)})), kPass);
    EXPECT_EQ(on_a(ipv6({kAllowed6, IPPROTO_UDP, udp(kAllowedUdp)})), kPass);
    EXPECT_TRUE(drain_events().empty()) << "what passes is not audited";
}

TEST_F(GuardTest, DeniedDestinationsAndPortsAreDroppedAndAudited) {
    struct Case {
        const char* what;
        Bytes frame;
        std::string dst;
        uint16_t port;
    } cases[] = {
        {"v4 tcp, denied address", ipv4({kDenied4, IPPROTO_TCP, tcp(kAllowedTcp)}), kDenied4, kAllowedTcp},
        {"v4 tcp, other port", ipv4({kAllowed4, IPPROTO_TCP, tcp(444)}), kAllowed4, 444},
        {"v4 udp, tcp-only port", ipv4({kAllowed4, IPPROTO_UDP, udp(kAllowedTcp)}), kAllowed4, kAllowedTcp},
        {"v6 tcp, denied address", ipv6({kDenied6, IPPROTO_TCP, tcp(kAllowedTcp)}), kDenied6, kAllowedTcp},
        {"v6 udp, other port", ipv6({kAllowed6, IPPROTO_UDP, udp(4001)}), kAllowed6, 4001},
    };
    for (auto& c : cases) {
        EXPECT_EQ(on_a(c.frame), kDrop) << c.what;
        auto e = last_drop();
        EXPECT_EQ(e.cgroup_id, cgroup_id()) << c.what;
        EXPECT_EQ(e.reason, REDIR_REASON_POLICY) << c.what;
        EXPECT_EQ(addr_to_string(e.addr), c.dst) << c.what;
        EXPECT_EQ(e.port, c.port) << c.what;
    }
}

TEST_F(GuardTest, EachInterfaceIsJudgedByItsOwnSandboxWhateverTheSourceSays) {
    // A frame A may send, forged with B's (identical) source or anyone's: on
    // B's link it is B's, and B may send nothing.
    V4 p{kAllowed4, IPPROTO_TCP, tcp(kAllowedTcp)};
    EXPECT_EQ(verdict(padded(ipv4(p)), links().a), kPass);
    p.src = "192.0.2.99";
    EXPECT_EQ(verdict(padded(ipv4(p)), links().a), kPass) << "the source is not what the guard keys on";
    EXPECT_EQ(verdict(padded(ipv4(p)), links().b), kDrop);
    auto e = last_drop();
    EXPECT_EQ(e.cgroup_id, b_id_) << "B's link drops in B's name";
}

TEST_F(GuardTest, AnInterfaceWithoutAnEntryDropsEverything) {
    EXPECT_EQ(verdict(padded(ipv4({kAllowed4, IPPROTO_TCP, tcp(kAllowedTcp)})), links().unguarded), kDrop);
    auto e = last_drop();
    EXPECT_EQ(e.reason, REDIR_REASON_NO_ATTACHMENT);
    EXPECT_EQ(e.cgroup_id, 0u);
}

TEST_F(GuardTest, FragmentsOptionsAndExtensionHeadersAreNotJudgedButDropped) {
    std::vector<Dropped> cases = {
        {"v4 first fragment (MF)", ipv4({.dst = kAllowed4, .l4 = tcp(kAllowedTcp), .frag_off = 0x2000}),
         REDIR_REASON_UNPARSED},
        {"v4 later fragment (offset)", ipv4({.dst = kAllowed4, .l4 = tcp(kAllowedTcp), .frag_off = 0x0003}),
         REDIR_REASON_UNPARSED},
        {"v4 options (loose source route)",
         ipv4({.dst = kAllowed4, .l4 = tcp(kAllowedTcp), .version_ihl = 0x46, .options = {0x83, 3, 4, 0}}),
         REDIR_REASON_UNPARSED},
        {"v6 fragment header", ipv6({kAllowed6, 44, cat(ext(IPPROTO_TCP), tcp(kAllowedTcp))}), REDIR_REASON_POLICY},
        {"v6 hop-by-hop header", ipv6({kAllowed6, 0, cat(ext(IPPROTO_TCP), tcp(kAllowedTcp))}), REDIR_REASON_POLICY},
        {"v6 routing header", ipv6({kAllowed6, 43, cat(ext(IPPROTO_TCP), tcp(kAllowedTcp))}), REDIR_REASON_POLICY},
        {"v6 destination options", ipv6({kAllowed6, 60, cat(ext(IPPROTO_UDP), udp(kAllowedUdp))}),
         REDIR_REASON_POLICY},
    };
    expect_dropped(cases);
}

TEST_F(GuardTest, MalformedHeadersAreDropped) {
    Bytes truncated_tcp = ipv4({kAllowed4, IPPROTO_TCP, tcp(kAllowedTcp)});
    truncated_tcp.resize(14 + 20 + 10);  // ports there, the rest of the TCP header not
    std::vector<Dropped> cases = {
        {"v4 version 6 in an IPv4 frame", ipv4({.dst = kAllowed4, .l4 = tcp(kAllowedTcp), .version_ihl = 0x65})},
        {"v4 header length below 20", ipv4({.dst = kAllowed4, .l4 = tcp(kAllowedTcp), .version_ihl = 0x44})},
        {"v4 total length ending before the ports (they would be padding)",
         ipv4({.dst = kAllowed4, .l4 = tcp(kAllowedTcp), .tot_len = 20})},
        {"v4 udp length short of its header", ipv4({.dst = kAllowed4, .proto = IPPROTO_UDP, .l4 = udp(kAllowedUdp),
                                                   .tot_len = 20 + 6})},
        {"v4 frame ends inside the TCP header", truncated_tcp},
        {"v6 version 4 in an IPv6 frame", ipv6({.dst = kAllowed6, .payload = tcp(kAllowedTcp), .version = 4})},
        {"v6 payload length ending before the ports", ipv6({.dst = kAllowed6, .payload = tcp(kAllowedTcp),
                                                           .payload_len = 2})},
        // (A frame cut inside the IP header: BPF_PROG_TEST_RUN refuses to run it, EINVAL.)
        {"v6 frame ends at the ports", cut(ipv6({kAllowed6, IPPROTO_UDP, udp(kAllowedUdp)}), 14 + 40 + 4)},
    };
    expect_dropped(cases, /*pad=*/false);  // the kernel test runner takes short frames as they are
}

TEST_F(GuardTest, VlanTagsAndOtherEthertypesAreDropped) {
    // A tag in the frame (hardware tags are stripped before tc and dropped by
    // skb->vlan_present; tests/e2e sends those through a real link).
    Bytes inner = ipv4({kAllowed4, IPPROTO_TCP, tcp(kAllowedTcp)});
    for (uint16_t tpid : {0x8100, 0x88a8}) {
        Bytes tagged = eth(tpid);
        tagged.insert(tagged.end(), {0x00, 0x05, 0x08, 0x00});
        tagged.insert(tagged.end(), inner.begin() + 14, inner.end());
        EXPECT_EQ(on_a(tagged), kDrop) << std::hex << tpid;
        EXPECT_EQ(last_drop().reason, REDIR_REASON_UNPARSED);
    }
    for (uint16_t type : {0x8864 /* PPPoE */, 0x8847 /* MPLS */, 0x88cc /* LLDP */, 0x0805, 0x86dc}) {
        Bytes f = eth(type);
        f.insert(f.end(), inner.begin() + 14, inner.end());
        EXPECT_EQ(on_a(f), kDrop) << std::hex << type;
        EXPECT_EQ(last_drop().reason, REDIR_REASON_UNPARSED);
    }
}

TEST_F(GuardTest, OnlyWellFormedArpPasses) {
    EXPECT_EQ(on_a(arp(1, 0x0800, 6, 4, 1)), kPass) << "request";
    EXPECT_EQ(on_a(arp(1, 0x0800, 6, 4, 2)), kPass) << "reply";
    EXPECT_TRUE(drain_events().empty());
    std::vector<Dropped> cases = {
        {"RARP opcode", arp(1, 0x0800, 6, 4, 3)},
        {"hardware type", arp(6, 0x0800, 6, 4, 1)},
        {"protocol IPv6", arp(1, 0x86dd, 6, 16, 1)},
        {"address lengths", arp(1, 0x0800, 16, 4, 1)},
    };
    expect_dropped(cases);
}

TEST_F(GuardTest, NeighbourDiscoveryPassesOnlyWhereItCannotLeaveTheLink) {
    constexpr uint8_t kNeighbourSolicitation = 135, kRouterSolicitation = 133, kEchoRequest = 128;
    EXPECT_EQ(on_a(ipv6({"ff02::1:ff00:1", 58, icmp6(kNeighbourSolicitation), 255})), kPass);
    EXPECT_EQ(on_a(ipv6({"ff02::2", 58, icmp6(kRouterSolicitation), 255})), kPass);
    EXPECT_EQ(on_a(ipv6({"fe80::1", 58, icmp6(kNeighbourSolicitation), 255})), kPass);
    EXPECT_EQ(on_a(ipv6({kTarget6, 58, icmp6(kNeighbourSolicitation), 255})), kPass) << "the agent's address (NUD)";
    EXPECT_TRUE(drain_events().empty());
    std::vector<Dropped> cases = {
        {"ND type to a routed address", ipv6({kDenied6, 58, icmp6(kNeighbourSolicitation), 255})},
        {"ND type to an allowed address", ipv6({kAllowed6, 58, icmp6(kNeighbourSolicitation), 255})},
        {"ND type to site-scope multicast", ipv6({"ff05::2", 58, icmp6(kNeighbourSolicitation), 255})},
        {"ND to the link with a forwarded hop limit", ipv6({"fe80::1", 58, icmp6(kNeighbourSolicitation), 64})},
        {"echo request to an allowed address", ipv6({kAllowed6, 58, icmp6(kEchoRequest), 64})},
        {"ICMPv4 to an allowed address", ipv4({kAllowed4, IPPROTO_ICMP, Bytes(8, 0)})},
    };
    for (auto& c : cases) c.reason = REDIR_REASON_POLICY;
    expect_dropped(cases);
}

TEST_F(GuardTest, TheAgentsAddressTakesOnlyTheRedirectPorts) {
    for (auto* t : {kTarget4, kTarget6}) {
        bool v4 = std::string(t) == kTarget4;
        auto frame = [&](uint8_t proto, uint16_t port) {
            Bytes l4 = proto == IPPROTO_TCP ? tcp(port) : udp(port);
            return v4 ? ipv4({t, proto, l4}) : ipv6({t, proto, l4});
        };
        for (uint16_t port : {kTerminatorPort, kPlainPort, kRelayPort, kDnsPort})
            EXPECT_EQ(on_a(frame(IPPROTO_TCP, port)), kPass) << t << " tcp " << port;
        EXPECT_EQ(on_a(frame(IPPROTO_UDP, kDnsPort)), kPass) << t << " udp " << kDnsPort;
        EXPECT_TRUE(drain_events().empty());
        // A host service on the same address (sshd, another sandbox's responder,
        // the terminator's port over UDP): what connect() refuses, the guard refuses.
        for (auto [proto, port] : std::vector<std::pair<uint8_t, uint16_t>>{
                 {IPPROTO_TCP, 22}, {IPPROTO_UDP, kDnsPort + 1}, {IPPROTO_UDP, kTerminatorPort}}) {
            EXPECT_EQ(on_a(frame(proto, port)), kDrop) << t << " " << int(proto) << " " << port;
            EXPECT_EQ(last_drop().reason, REDIR_REASON_AGENT_ADDRESS) << t << " " << port;
        }
    }
    EXPECT_EQ(on_a(ipv4({kTarget4, IPPROTO_ICMP, Bytes(8, 0)})), kDrop) << "ping to the agent";
    drain_events();
}

TEST_F(GuardTest, WhatConnectWouldHaveRedirectedOrRefusedIsDropped) {
    std::vector<Dropped> cases = {
        {"DNS to an outside resolver", ipv4({"198.51.100.53", IPPROTO_UDP, udp(53)}), REDIR_REASON_UNREDIRECTED},
        {"DNS over TCP", ipv6({kAllowed6, IPPROTO_TCP, tcp(53)}), REDIR_REASON_UNREDIRECTED},
        {"inference VIP unrewritten", ipv4({kVip4, IPPROTO_TCP, tcp(443)}), REDIR_REASON_UNREDIRECTED},
        {"metadata service", ipv4({"169.254.169.254", IPPROTO_TCP, tcp(80)}), REDIR_REASON_LINK_LOCAL},
        {"loopback, though a rule names it", ipv4({"127.0.0.1", IPPROTO_TCP, tcp(80)}), REDIR_REASON_LOOPBACK},
        {"v6 loopback", ipv6({"::1", IPPROTO_TCP, tcp(80)}), REDIR_REASON_LOOPBACK},
    };
    expect_dropped(cases);
}

TEST_F(GuardTest, AnswersOfAServerInsideReachOnlyClientsThePolicyNames) {
    // An answer is a packet to the client's address and port, judged like any other.
    auto syn_ack = [](const std::string& client, uint16_t client_port) {
        Bytes f = ipv4({client, IPPROTO_TCP, tcp(client_port)});
        f[14 + 20 + 13] = 0x12;
        return f;
    };
    EXPECT_EQ(on_a(syn_ack(kClient4, 51000)), kPass) << "a client named without ports";
    EXPECT_TRUE(drain_events().empty());
    EXPECT_EQ(on_a(syn_ack(kDenied4, 51000)), kDrop) << "a client the policy does not name";
    EXPECT_EQ(last_drop().reason, REDIR_REASON_POLICY);
    EXPECT_EQ(on_a(syn_ack(kAllowed4, 51000)), kDrop) << "named for port 443 only: its port 51000 is not";
    EXPECT_EQ(last_drop().port, 51000);
}

TEST_F(GuardTest, DetachingAnotherSandboxLeavesThisGuardInPlace) {
    dp_->detach(b_id_);
    b_cg_.reset();
    EXPECT_EQ(on_a(ipv4({kAllowed4, IPPROTO_TCP, tcp(kAllowedTcp)})), kPass);
    EXPECT_EQ(on_a(ipv4({kDenied4, IPPROTO_TCP, tcp(kAllowedTcp)})), kDrop);
    EXPECT_EQ(last_drop().cgroup_id, cgroup_id());
    // B's link has no entry any more: fail closed for whatever is still attached there.
    EXPECT_EQ(verdict(padded(ipv4({kAllowed4, IPPROTO_TCP, tcp(kAllowedTcp)})), links().b), kDrop);
    EXPECT_EQ(last_drop().reason, REDIR_REASON_NO_ATTACHMENT);
}

}  // namespace

int main(int argc, char** argv) {
    g_root = ::geteuid() == 0;
    if (g_root) return testsupport::kernel_test_main(argc, argv, {});
    // Without root every case is skipped, with the reason, instead of failing the binary.
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
