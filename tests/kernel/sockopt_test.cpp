// Real-kernel tests of cgroup/setsockopt: in an attached cgroup, options that
// route packets past the destination connect()/sendmsg() checked (IPv4
// source routing in IP_OPTIONS, IPv6 routing headers such as a Segment
// Routing Header, and the extension-header options around them) fail with
// EPERM and an audit event, while ordinary options, large ones included,
// still work. Each refused option is shown to be accepted outside the
// sandbox on this kernel first, otherwise the case is skipped.
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>

#include "sandbox_fixture.hpp"

using namespace redir;
using namespace redir::kerneltest;

namespace {

#ifndef IPV6_2292PKTOPTIONS
#define IPV6_2292PKTOPTIONS 6
#endif

struct Option {
    const char* name;
    int family, type, level, optname;
    std::vector<uint8_t> value;
};

std::ostream& operator<<(std::ostream& os, const Option& o) { return os << o.name; }

// setsockopt() on a fresh socket from the calling process: 0 or errno.
int try_setsockopt(const Option& o) {
    int fd = ::socket(o.family, o.type | SOCK_CLOEXEC, 0);
    if (fd < 0) return 1000 + errno;
    int rc = ::setsockopt(fd, o.level, o.optname, o.value.data(), static_cast<socklen_t>(o.value.size()));
    int err = rc == 0 ? 0 : errno;
    ::close(fd);
    return err;
}

// Loose source route through 203.0.113.99 (NOP for alignment, then LSRR).
std::vector<uint8_t> lsrr() { return {IPOPT_NOP, IPOPT_LSRR, 7, 4, 203, 0, 113, 99}; }

// Segment Routing Header (type 4): active segment 2001:db8::1, then on to 2001:db8::99.
std::vector<uint8_t> srh() {
    std::vector<uint8_t> h = {0, 4, 4, 1, 1, 0, 0, 0};  // nexthdr, hdrlen (8-octet units), type, left, first, flags, tag
    uint8_t last[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99};
    uint8_t first[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01};
    h.insert(h.end(), last, last + 16);
    h.insert(h.end(), first, first + 16);
    return h;
}

// Type 0 routing header (deprecated, refused by the kernel anyway) and an
// empty Hop-by-Hop / Destination options header (8 octets of padding).
std::vector<uint8_t> empty_ext_header() { return {0, 0, 1, 4, 0, 0, 0, 0}; }

std::vector<uint8_t> int_value(int v) {
    std::vector<uint8_t> b(sizeof(int));
    std::memcpy(b.data(), &v, sizeof(int));
    return b;
}

class RefusedOption : public SandboxTest, public ::testing::WithParamInterface<Option> {};

TEST_P(RefusedOption, RefusedInSandboxWithAuditEventWhileAcceptedOutside) {
    const Option o = GetParam();
    int out = outside([o] { return try_setsockopt(o); });
    if (out != 0)
        GTEST_SKIP() << o.name << " is not accepted outside any sandbox on this kernel either ("
                     << std::strerror(out >= 1000 ? out - 1000 : out) << ")";
    EXPECT_EQ(in_sandbox([o] { return try_setsockopt(o); }), EPERM) << o.name;
    size_t matching = 0;
    for (auto& e : drain_events()) {
        if (e.kind != REDIR_EV_SETSOCKOPT) continue;
        EXPECT_EQ(e.reason, REDIR_REASON_SOURCE_ROUTE);
        EXPECT_EQ(e.policy_id, policy_id_);
        matching += e.family == o.family && e.proto == o.level && e.sock_protocol == o.optname;
    }
    EXPECT_EQ(matching, 1u);
}

INSTANTIATE_TEST_SUITE_P(
    Sockopt, RefusedOption,
    ::testing::Values(Option{"IpOptionsLsrrUdp", AF_INET, SOCK_DGRAM, IPPROTO_IP, IP_OPTIONS, lsrr()},
                      Option{"IpOptionsLsrrTcp", AF_INET, SOCK_STREAM, IPPROTO_IP, IP_OPTIONS, lsrr()},
                      Option{"SegmentRoutingHeaderUdp", AF_INET6, SOCK_DGRAM, IPPROTO_IPV6, IPV6_RTHDR, srh()},
                      Option{"SegmentRoutingHeaderTcp", AF_INET6, SOCK_STREAM, IPPROTO_IPV6, IPV6_RTHDR, srh()},
                      Option{"Rfc2292Rthdr", AF_INET6, SOCK_DGRAM, IPPROTO_IPV6, IPV6_2292RTHDR, srh()},
                      Option{"Rfc2292PktOptions", AF_INET6, SOCK_DGRAM, IPPROTO_IPV6, IPV6_2292PKTOPTIONS, {}},
                      Option{"HopByHopOptions", AF_INET6, SOCK_DGRAM, IPPROTO_IPV6, IPV6_HOPOPTS, empty_ext_header()},
                      Option{"DestinationOptions", AF_INET6, SOCK_DGRAM, IPPROTO_IPV6, IPV6_DSTOPTS,
                             empty_ext_header()}),
    [](const ::testing::TestParamInfo<Option>& i) { return std::string(i.param.name); });

class AdmittedOption : public SandboxTest, public ::testing::WithParamInterface<Option> {};

TEST_P(AdmittedOption, WorksInSandbox) {
    const Option o = GetParam();
    EXPECT_EQ(in_sandbox([o] { return try_setsockopt(o); }), 0) << o.name;
    for (auto& e : drain_events()) EXPECT_NE(e.kind, REDIR_EV_SETSOCKOPT);
}

INSTANTIATE_TEST_SUITE_P(
    Sockopt, AdmittedOption,
    ::testing::Values(Option{"ReuseAddr", AF_INET, SOCK_STREAM, SOL_SOCKET, SO_REUSEADDR, int_value(1)},
                      Option{"TcpNoDelay", AF_INET6, SOCK_STREAM, IPPROTO_TCP, TCP_NODELAY, int_value(1)},
                      Option{"IpTos", AF_INET, SOCK_DGRAM, IPPROTO_IP, IP_TOS, int_value(0x10)},
                      Option{"V6Only", AF_INET6, SOCK_STREAM, IPPROTO_IPV6, IPV6_V6ONLY, int_value(1)},
                      // Larger than the page the program sees: must not turn into EFAULT.
                      Option{"LargeValue", AF_INET, SOCK_STREAM, SOL_SOCKET, SO_RCVBUF,
                             [] {
                                 auto v = int_value(65536);
                                 v.resize(8192);
                                 return v;
                             }()}),
    [](const ::testing::TestParamInfo<Option>& i) { return std::string(i.param.name); });

}  // namespace
