#pragma once
// Random canonical CIDRs for large generated policies (the compiler's unit
// tests and its benchmark): 3/4 IPv4 /16../32, 1/4 IPv6 /48../128 in 2001:db8::/32.
#include <random>

#include "policy/model.hpp"

namespace redir::testsupport {

inline policy::Cidr random_cidr(std::mt19937& rng) {
    policy::Cidr c;
    c.v4 = rng() % 4 != 0;
    if (c.v4) {
        c.addr = policy::v4_mapped(static_cast<uint32_t>(rng()));
        c.len = static_cast<uint8_t>(96 + 16 + rng() % 17);
    } else {
        c.addr = *policy::parse_addr("2001:db8::");
        for (int b = 4; b < 16; ++b) c.addr[b] = static_cast<uint8_t>(rng());
        c.len = static_cast<uint8_t>(48 + rng() % 81);
    }
    // Host bits cleared: the parser rejects non-canonical prefixes.
    for (int b = c.len; b < 128; ++b) c.addr[b / 8] &= static_cast<uint8_t>(~(0x80 >> (b % 8)));
    return c;
}

}  // namespace redir::testsupport
