// Parsing, printing and containment of the one address/prefix type.
#include "common/cidr.hpp"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

namespace redir {

bool is_v4_mapped(const Addr& a) {
    static constexpr uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return std::memcmp(a.data(), prefix, 12) == 0;
}

Addr mask_addr(const Addr& a, unsigned len) {
    Addr out{};
    for (unsigned i = 0; i < 16; ++i) {
        unsigned bits = len >= (i + 1) * 8 ? 8 : (len > i * 8 ? len - i * 8 : 0);
        out[i] = bits == 0 ? 0 : static_cast<uint8_t>(a[i] & (0xff00u >> bits));
    }
    return out;
}

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
    in_addr v4{};
    if (inet_pton(AF_INET, s.c_str(), &v4) == 1) return v4_mapped(ntohl(v4.s_addr));
    in6_addr v6{};
    if (inet_pton(AF_INET6, s.c_str(), &v6) == 1) {
        Addr a{};
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

bool Cidr::contains(const Addr& a) const { return len <= 128 && mask_addr(a, len) == addr; }

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
    c.addr = mask_addr(*addr, c.len);
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

}  // namespace redir
