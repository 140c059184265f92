#pragma once
// The one address and prefix type of the C++ side: 16 bytes, IPv4 as
// v4-mapped IPv6 (::ffff:a.b.c.d), the layout of struct redir_addr in every
// kernel map. Used by the policy language, the DNS responder and the
// special-address table alike.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "redir/types.h"

namespace redir {

using Addr = std::array<uint8_t, 16>;

// A prefix in the 128-bit space. For IPv4, `addr` is v4-mapped and `len` is
// 96 + the IPv4 prefix length, so one containment test serves both families.
struct Cidr {
    Addr addr{};
    uint8_t len = 0;  // 0..128, host bits always zero
    bool v4 = false;  // written (and shown) as IPv4

    // Canonical text: "10.0.0.0/8", "2001:db8::/32".
    std::string to_string() const;
    bool contains(const Addr& a) const;
    bool contains(const Cidr& inner) const { return inner.len >= len && contains(inner.addr); }
    bool operator==(const Cidr&) const = default;
};

// Parses "a.b.c.d/n", "x:y::/n", or a bare address (a host route). Returns an
// error message (without location) on failure; host bits set is an error that
// names the canonical prefix. A v6 prefix inside ::ffff:0:0/96 becomes IPv4.
struct CidrParse {
    std::optional<Cidr> cidr;
    std::string error;
};
CidrParse parse_cidr(std::string_view text);

std::optional<Addr> parse_addr(std::string_view text);  // v4 returned v4-mapped
std::string addr_to_string(const Addr& a);               // v4-mapped shown as v4
Addr v4_mapped(uint32_t host_order_v4);
bool is_v4_mapped(const Addr& a);
// A with every bit after the first LEN cleared.
Addr mask_addr(const Addr& a, unsigned len);

inline Addr to_addr(const redir_addr& a) {
    Addr out;
    for (size_t i = 0; i < 16; ++i) out[i] = a.b[i];
    return out;
}
inline redir_addr to_redir_addr(const Addr& a) {
    redir_addr out;
    for (size_t i = 0; i < 16; ++i) out.b[i] = a[i];
    return out;
}

}  // namespace redir
