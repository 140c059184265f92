// The special-address table itself; see special.hpp.
#include "common/special.hpp"

namespace redir {

namespace {

Cidr make(std::string_view text) { return *parse_cidr(text).cidr; }

}  // namespace

const std::vector<SpecialRange>& special_ranges() {
    using C = AddrClass;
    static const std::vector<SpecialRange> ranges = {
        // IPv4
        {make("0.0.0.0/8"), C::special, "\"this network\""},
        {make("0.0.0.0/32"), C::loopback, "unspecified (0.0.0.0 reaches the local host)"},
        {make("10.0.0.0/8"), C::special, "private (RFC 1918)"},
        {make("100.64.0.0/10"), C::special, "CGNAT"},
        {make("100.100.100.200/32"), C::never_reachable, "Alibaba Cloud metadata"},
        {make("127.0.0.0/8"), C::loopback, "loopback"},
        {make("169.254.0.0/16"), C::never_reachable, "link-local"},
        {make("172.16.0.0/12"), C::special, "private (RFC 1918)"},
        {make("192.0.0.0/24"), C::special, "IETF protocol assignments"},
        {make("192.168.0.0/16"), C::special, "private (RFC 1918)"},
        {make("198.18.0.0/15"), C::special, "benchmarking"},
        {make("224.0.0.0/4"), C::special, "multicast"},
        {make("240.0.0.0/4"), C::special, "reserved"},
        {make("255.255.255.255/32"), C::special, "broadcast"},
        // IPv6
        {make("::/96"), C::special, "IPv4-compatible (deprecated)"},
        {make("::/128"), C::loopback, "unspecified (:: reaches the local host)"},
        {make("::1/128"), C::loopback, "loopback"},
        {make("::a9fe:0/112"), C::never_reachable, "link-local embedded in IPv4-compatible IPv6"},
        {make("::ffff:0:0/96"), C::ipv4_mapped, "IPv4-mapped"},
        {make("64:ff9b::/96"), C::special, "NAT64"},
        {make("64:ff9b::a9fe:0/112"), C::never_reachable, "link-local embedded in NAT64"},
        {make("64:ff9b:1::/48"), C::special, "local-use NAT64"},
        {make("100::/64"), C::special, "discard"},
        {make("2002::/16"), C::special, "6to4"},
        {make("2002:a9fe::/32"), C::never_reachable, "link-local embedded in 6to4"},
        {make("fc00::/7"), C::special, "unique local"},
        {make("fd00:ec2::254/128"), C::never_reachable, "AWS IMDSv6 metadata"},
        {make("fe80::/10"), C::never_reachable, "link-local"},
        {make("fec0::/10"), C::special, "site-local (deprecated)"},
        {make("ff00::/8"), C::special, "multicast"},
    };
    return ranges;
}

const SpecialRange* innermost_special(const Addr& a) {
    const SpecialRange* best = nullptr;
    for (const auto& s : special_ranges()) {
        if (s.cidr.contains(a) && (!best || s.cidr.len > best->cidr.len)) best = &s;
    }
    return best;
}

bool is_special(const Addr& a) {
    const SpecialRange* s = innermost_special(a);
    return s && s->cls != AddrClass::ipv4_mapped;
}

bool is_never_reachable(const Addr& a) {
    const SpecialRange* s = innermost_special(a);
    return s && s->cls == AddrClass::never_reachable;
}

bool is_loopback(const Addr& a) {
    const SpecialRange* s = innermost_special(a);
    return s && s->cls == AddrClass::loopback;
}

const SpecialRange* range_containing(const Cidr& c, AddrClass cls) {
    for (const auto& s : special_ranges())
        if (s.cls == cls && s.cidr.contains(c)) return &s;
    return nullptr;
}

}  // namespace redir
