#include "policy/model.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <cstring>

namespace redir::policy {

namespace {

bool is_v4_mapped(const Addr& a) {
    static constexpr uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return std::memcmp(a.data(), prefix, 12) == 0;
}

Addr mask(const Addr& a, unsigned len) {
    Addr out{};
    for (unsigned i = 0; i < 16; ++i) {
        unsigned bits = len >= (i + 1) * 8 ? 8 : (len > i * 8 ? len - i * 8 : 0);
        out[i] = bits == 0 ? 0 : static_cast<uint8_t>(a[i] & (0xff00u >> bits));
    }
    return out;
}

Cidr make(std::string_view text) {
    auto r = parse_cidr(text);
    return *r.cidr;
}

}  // namespace

Addr v4_mapped(uint32_t v4) {
    Addr a{};
    a[10] = a[11] = 0xff;
    a[12] = static_cast<uint8_t>(v4 >> 24);
    a[13] = static_cast<uint8_t>(v4 >> 16);
    a[14] = static_cast<uint8_t>(v4 >> 8);
    a[15] = static_cast<uint8_t>(v4);
    return a;
}

std::optional<Addr> parse_addr(std::string_view text) {
    std::string s(text);
    Addr a{};
    in_addr v4{};
    if (inet_pton(AF_INET, s.c_str(), &v4) == 1) {
        return v4_mapped(ntohl(v4.s_addr));
    }
    in6_addr v6{};
    if (inet_pton(AF_INET6, s.c_str(), &v6) == 1) {
        std::memcpy(a.data(), v6.s6_addr, 16);
        return a;
    }
    return std::nullopt;
}

std::string addr_to_string(const Addr& a) {
    char buf[INET6_ADDRSTRLEN];
    if (is_v4_mapped(a)) {
        inet_ntop(AF_INET, a.data() + 12, buf, sizeof buf);
    } else {
        inet_ntop(AF_INET6, a.data(), buf, sizeof buf);
    }
    return buf;
}

std::string Cidr::to_string() const {
    char buf[INET6_ADDRSTRLEN];
    if (v4) {
        inet_ntop(AF_INET, addr.data() + 12, buf, sizeof buf);
        return std::string(buf) + "/" + std::to_string(len - 96);
    }
    inet_ntop(AF_INET6, addr.data(), buf, sizeof buf);
    return std::string(buf) + "/" + std::to_string(len);
}

bool Cidr::contains(const Addr& a) const { return mask(a, len) == addr; }

CidrParse parse_cidr(std::string_view text) {
    CidrParse out;
    auto slash = text.find('/');
    std::string_view addr_part = text.substr(0, slash);
    auto addr = parse_addr(addr_part);
    if (!addr) {
        out.error = "invalid CIDR \"" + std::string(text) + "\": \"" + std::string(addr_part) +
                    "\" is not an IPv4 or IPv6 address";
        return out;
    }
    // Whether the user wrote IPv4 decides the prefix-length scale; a v4-mapped
    // v6 prefix of /96 or longer is the same thing as an IPv4 prefix.
    bool wrote_v4 = addr_part.find(':') == std::string_view::npos;
    unsigned max = wrote_v4 ? 32 : 128;
    unsigned plen = max;
    if (slash != std::string_view::npos) {
        std::string_view p = text.substr(slash + 1);
        unsigned v = 0;
        auto [ptr, ec] = std::from_chars(p.data(), p.data() + p.size(), v);
        if (p.empty() || ec != std::errc() || ptr != p.data() + p.size() || (p.size() > 1 && p[0] == '0')) {
            out.error = "invalid CIDR \"" + std::string(text) + "\": prefix length \"" + std::string(p) +
                        "\" is not a number";
            return out;
        }
        if (v > max) {
            out.error = "invalid CIDR \"" + std::string(text) + "\": prefix length must be 0-" +
                        std::to_string(max) + " for " + (wrote_v4 ? "IPv4" : "IPv6");
            return out;
        }
        plen = v;
    }
    Cidr c;
    c.len = static_cast<uint8_t>(wrote_v4 ? plen + 96 : plen);
    c.addr = mask(*addr, c.len);
    c.v4 = wrote_v4 || (c.len >= 96 && is_v4_mapped(c.addr));
    if (c.addr != *addr) {
        Cidr shown = c;
        shown.v4 = wrote_v4;
        out.error = "CIDR \"" + std::string(text) + "\" has host bits set; did you mean \"" +
                    shown.to_string() + "\"?";
        return out;
    }
    out.cidr = c;
    return out;
}

std::string_view to_string(Protocol p) {
    switch (p) {
    case Protocol::tcp: return "tcp";
    case Protocol::udp: return "udp";
    case Protocol::any: return "any";
    }
    return "?";
}

std::string_view to_string(RuleKind k) {
    switch (k) {
    case RuleKind::allow: return "allow";
    case RuleKind::deny: return "deny";
    case RuleKind::inspect: return "inspect";
    }
    return "?";
}

std::vector<PortRange> normalize_ports(std::vector<PortRange> ports) {
    std::sort(ports.begin(), ports.end(),
              [](const PortRange& a, const PortRange& b) { return a.lo < b.lo || (a.lo == b.lo && a.hi < b.hi); });
    std::vector<PortRange> out;
    for (const auto& r : ports) {
        if (!out.empty() && static_cast<uint32_t>(r.lo) <= static_cast<uint32_t>(out.back().hi) + 1) {
            out.back().hi = std::max(out.back().hi, r.hi);
        } else {
            out.push_back(r);
        }
    }
    return out;
}

const std::vector<SpecialRange>& special_ranges() {
    // ::ffff:0:0/96 is listed so that an IPv6 rule (even ::/0) never admits
    // IPv4 destinations: only IPv4 rules (which live inside it) do.
    static const std::vector<SpecialRange> ranges = {
        {make("0.0.0.0/8"), "\"this network\" (0.0.0.0/8)", false},
        {make("10.0.0.0/8"), "private (RFC 1918)", false},
        {make("100.64.0.0/10"), "CGNAT (100.64.0.0/10)", false},
        {make("127.0.0.0/8"), "loopback", false},
        {make("169.254.0.0/16"), "link-local (169.254.0.0/16)", true},
        {make("172.16.0.0/12"), "private (RFC 1918)", false},
        {make("192.0.0.0/24"), "IETF protocol assignments (192.0.0.0/24)", false},
        {make("192.168.0.0/16"), "private (RFC 1918)", false},
        {make("198.18.0.0/15"), "benchmarking (198.18.0.0/15)", false},
        {make("224.0.0.0/4"), "multicast", false},
        {make("240.0.0.0/4"), "reserved (240.0.0.0/4)", false},
        {make("255.255.255.255/32"), "broadcast", false},
        {make("::/128"), "unspecified (::)", false},
        {make("::1/128"), "loopback", false},
        {make("::ffff:0:0/96"), "IPv4-mapped (::ffff:0:0/96)", false},
        {make("64:ff9b::/96"), "NAT64 (64:ff9b::/96)", false},
        {make("64:ff9b:1::/48"), "local-use NAT64 (64:ff9b:1::/48)", false},
        {make("2002::/16"), "6to4 (2002::/16)", false},
        {make("fc00::/7"), "unique local (fc00::/7)", false},
        {make("fe80::/10"), "link-local (fe80::/10)", true},
        {make("ff00::/8"), "multicast", false},
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
    // Every IPv4 address is inside ::ffff:0:0/96; that range only separates
    // the families, it does not make public IPv4 special.
    if (!s) return false;
    return !(s->cidr.len == 96 && is_v4_mapped(s->cidr.addr));
}

bool is_link_local(const Addr& a) {
    const SpecialRange* s = innermost_special(a);
    return s && s->link_local;
}

}  // namespace redir::policy
