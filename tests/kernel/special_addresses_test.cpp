// Real-kernel tests of the special-address table as the BPF programs apply
// it (the kernel's checks are generated from userspace/common/special.cpp):
// every never-reachable range is denied even under an allow-everything map
// entry, a wider policy rule never reaches metadata (real listeners see
// nothing), and the node's loopback opens only through a cidr rule, never
// through a DNS admission.
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <time.h>

#include <cctype>
#include <set>

#include "kernel_main.hpp"
#include "policy/compile.hpp"
#include "policy/parse.hpp"
#include "sandbox_fixture.hpp"

using namespace redir;
using namespace redir::kerneltest;

namespace {

// Addresses put on the test namespace's lo (fake ones, plus the metadata
// addresses themselves so that a leak would really connect).
const std::vector<std::string> kLoAddrs = {
    "203.0.113.1/24",        "2001:db8::1/64",       "169.254.169.254/32", "100.100.100.200/32",
    "100.64.0.5/32",         "fd00:ec2::254/128",    "fd00::5/128",        "64:ff9b::a9fe:a9fe/128",
    "64:ff9b::cb00:7105/128", "2002:a9fe:a9fe::1/128", "2002:cb00:7105::1/128"};

Addr add(Addr a, int delta) {
    for (int i = 15; i >= 0 && delta; --i) {
        int v = a[i] + delta;
        a[i] = static_cast<uint8_t>(v & 0xff);
        delta = v < 0 ? -1 : (v >> 8);
    }
    return a;
}

Addr last_of(const Cidr& c) {
    Addr a = c.addr;
    for (int b = c.len; b < 128; ++b) a[b / 8] |= static_cast<uint8_t>(0x80 >> (b % 8));
    return a;
}

// True if a connection is waiting on listener FD (it must not be).
bool has_pending(int fd) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 200) > 0;
}

}  // namespace
namespace redir {
void PrintTo(const SpecialRange& r, std::ostream* os) { *os << r.cidr.to_string() << " (" << r.what << ")"; }
}  // namespace redir
namespace {

std::vector<SpecialRange> never_reachable_ranges() {
    std::vector<SpecialRange> v;
    for (const auto& s : special_ranges())
        if (s.cls == AddrClass::never_reachable) v.push_back(s);
    return v;
}

// ---- the generated kernel check against the C++ table ----

class NeverReachable : public SandboxTest, public ::testing::WithParamInterface<SpecialRange> {};

TEST_P(NeverReachable, DeniedUnderAllowEverythingEntryWhileNeighboursAreNot) {
    const SpecialRange r = GetParam();
    allow_all_ports("::", 0);  // one LPM entry covering every address: only the never-reachable check can deny
    Addr first = r.cidr.addr, last = last_of(r.cidr);
    std::set<Addr> inside = {first, last};
    if (r.cidr.len < 127) inside.insert({add(first, 1), add(last, -1)});
    for (const Addr& a : inside) {
        std::string text = addr_to_string(a);
        EXPECT_EQ(in_sandbox([text] { return try_connect(text, 80); }), EPERM) << text << " in " << r.what;
    }
    size_t never_events = 0;
    for (auto& e : drain_events()) never_events += e.reason == REDIR_REASON_LINK_LOCAL;
    EXPECT_EQ(never_events, inside.size());
    // Just outside the range the allow-everything entry decides: not EPERM
    // (no route in this namespace, so nothing is sent either way).
    for (const Addr& a : {add(first, -1), add(last, 1)}) {
        if (is_never_reachable(a)) continue;
        std::string text = addr_to_string(a);
        EXPECT_NE(in_sandbox([text] { return try_connect(text, 80); }), EPERM) << text << " next to " << r.what;
    }
}

INSTANTIATE_TEST_SUITE_P(Table, NeverReachable, ::testing::ValuesIn(never_reachable_ranges()),
                         [](const ::testing::TestParamInfo<SpecialRange>& i) {
                             std::string n = "Range" + std::to_string(i.index) + "_";
                             for (char c : i.param.cidr.to_string()) n += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                             return n;
                         });

// ---- a compiled policy with wide rules, real listeners on the metadata addresses ----

class SpecialPolicy : public SandboxTest {
protected:
    void load(const std::string& allow) {
        auto r = policy::parse_policy(R"({"version":1,"name":"k","allow":[)" + allow + "]}", "k.json");
        ASSERT_TRUE(r.ok()) << r.error_text();
        compiled_ = policy::compile(*r.policy, policy_id_);
        for (auto& e : compiled_.portsets) dp_->put_portset(e.key, e.set);
        for (auto& e : compiled_.lpm) dp_->put_lpm(e.key, e.val);
    }

    policy::CompiledPolicy compiled_;
};

TEST_F(SpecialPolicy, WideRulesNeverReachMetadataInAnyForm) {
    load(R"({"cidr":"100.64.0.0/10"},{"cidr":"fd00::/8"},{"cidr":"64:ff9b::/96"},)"
         R"({"cidr":"2002::/16"},{"cidr":"0.0.0.0/0"},{"cidr":"::/0"},{"cidr":"169.0.0.0/8"})");
    struct Case {
        std::string listen, dial;
        bool reachable;
    };
    const std::vector<Case> cases = {
        {"100.100.100.200", "100.100.100.200", false},  // Alibaba metadata inside 100.64/10
        {"100.100.100.200", "::ffff:100.100.100.200", false},
        {"100.64.0.5", "100.64.0.5", true},
        {"fd00:ec2::254", "fd00:ec2::254", false},  // AWS IMDSv6 inside fd00::/8
        {"fd00::5", "fd00::5", true},
        {"169.254.169.254", "169.254.169.254", false},
        {"169.254.169.254", "::ffff:169.254.169.254", false},
        {"64:ff9b::a9fe:a9fe", "64:ff9b::a9fe:a9fe", false},  // NAT64-embedded 169.254.169.254
        {"64:ff9b::cb00:7105", "64:ff9b::cb00:7105", true},
        {"2002:a9fe:a9fe::1", "2002:a9fe:a9fe::1", false},  // 6to4-embedded
        {"2002:cb00:7105::1", "2002:cb00:7105::1", true},
    };
    for (const auto& c : cases) {
        uint16_t port = 0;
        int fd = listen_on(c.listen, port);
        ASSERT_GE(fd, 0) << c.listen;
        std::string dial = c.dial;
        int rc = in_sandbox([dial, port] { return try_connect(dial, port); });
        if (c.reachable) {
            EXPECT_EQ(rc, 0) << dial << " is inside a rule and not metadata: the test itself is broken otherwise";
        } else {
            EXPECT_EQ(rc, EPERM) << dial;
            EXPECT_FALSE(has_pending(fd)) << "the listener on " << c.listen << " saw a connection";
        }
        ::close(fd);
    }
    size_t never = 0;
    for (auto& e : drain_events()) never += e.reason == REDIR_REASON_LINK_LOCAL;
    EXPECT_EQ(never, 7u) << "each metadata refusal comes from the kernel's never-reachable check";
}

// ---- loopback: a cidr rule with address and port, never a DNS admission ----

uint64_t boot_ns() {
    timespec ts{};
    ::clock_gettime(CLOCK_BOOTTIME, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

TEST_F(SpecialPolicy, DnsAdmissionNeverOpensTheNodesLoopback) {
    load(R"({"host":"public.example"})");  // gives the compiled policy a port set for host admissions
    uint32_t ps = *compiled_.admit("public.example", *parse_addr("203.0.113.7"));
    auto admit = [&](const std::string& a) {
        redir_dns_allow_key k{};
        k.cgroup_id = cgroup_id();
        std::memcpy(k.addr.b, addr_parse(a)->b, 16);
        dp_->put_dns_allow(k, {policy_id_, ps, boot_ns() + 60'000'000'000ull});
    };
    // What a compromised or buggy agent might write: the kernel ignores it.
    for (const std::string a : {"127.0.0.1", "::1", "0.0.0.0", "203.0.113.1"}) admit(a);
    for (const std::string a : {"127.0.0.1", "::1"}) {
        uint16_t port = 0;
        int fd = listen_on(a, port);
        ASSERT_GE(fd, 0);
        EXPECT_EQ(in_sandbox([a, port] { return try_connect(a, port); }), EPERM) << a;
        EXPECT_FALSE(has_pending(fd)) << a;
        if (a == "127.0.0.1") {
            EXPECT_EQ(in_sandbox([port] { return try_connect("0.0.0.0", port); }), EPERM)
                << "0.0.0.0 reaches the local host";
            EXPECT_FALSE(has_pending(fd));
        }
        ::close(fd);
    }
    // The same admission for a fake public address does open it: the test can fail.
    uint16_t port = 0;
    int fd = listen_on("203.0.113.1", port);
    EXPECT_EQ(in_sandbox([port] { return try_connect("203.0.113.1", port); }), 0);
    ::close(fd);
}

TEST_F(SpecialPolicy, CidrRuleOpensLoopbackOnlyForItsAddressAndPort) {
    uint16_t port = 0, other = 0;
    int fd = listen_on("127.0.0.1", port);
    int fd2 = listen_on("127.0.0.1", other);
    ASSERT_GE(fd, 0);
    load(R"({"cidr":"127.0.0.1/32","ports":[)" + std::to_string(port) + "]}");
    EXPECT_EQ(in_sandbox([port] { return try_connect("127.0.0.1", port); }), 0);
    EXPECT_EQ(in_sandbox([other] { return try_connect("127.0.0.1", other); }), EPERM);
    EXPECT_FALSE(has_pending(fd2));
    ::close(fd);
    ::close(fd2);
}

// A sandbox in its own network namespace only talks to itself on loopback.
TEST_F(SpecialPolicy, OwnNamespaceReachesItsOwnLoopbackFreely) {
    int rc = in_sandbox([] {
        if (::unshare(CLONE_NEWNET) != 0) return 100;
        return try_connect("127.0.0.1", 9);  // lo is down there: ENETUNREACH, unless the hook says EPERM
    });
    EXPECT_NE(rc, 100) << "unshare failed";
    EXPECT_NE(rc, EPERM);
}

}  // namespace

int main(int argc, char** argv) { return redir::testsupport::kernel_test_main(argc, argv, kLoAddrs); }
