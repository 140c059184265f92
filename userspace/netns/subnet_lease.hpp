#pragma once
// A /30 of a pool held by one process: distinct for every concurrent holder,
// released when the holder ends — by the kernel too, when it is SIGKILLed.
#include <cstdint>
#include <string>

#include "common/fd.hpp"

namespace redir::netns {

class SubnetLease {
public:
    // The first free /30 of POOL (IPv4 CIDR, prefix at most 30) from slot
    // FIRST on. A slot is held by an flock on LOCK_DIR/<subnet>.lock (made
    // 0700 if absent), so two processes never hold one, and a dead holder's
    // lock is gone with it. Throws when every slot is held.
    static SubnetLease acquire(const std::string& pool, const std::string& lock_dir, uint32_t first = 0);

    SubnetLease(SubnetLease&& o) noexcept;
    SubnetLease& operator=(SubnetLease&&) = delete;
    ~SubnetLease();

    uint32_t slot() const { return slot_; }
    std::string subnet() const;        // "a.b.c.n/30"
    std::string host_addr() const;     // n+1: the agent's end
    std::string sandbox_addr() const;  // n+2: the sandbox's end
    static constexpr int kPrefix = 30;

private:
    SubnetLease(uint32_t slot, uint32_t base, UniqueFd lock, std::string path)
        : slot_(slot), base_(base), lock_(std::move(lock)), path_(std::move(path)) {}
    uint32_t slot_;
    uint32_t base_;  // network address, host byte order
    UniqueFd lock_;
    std::string path_;
};

// The IPv6 side of a lease: the /64 numbered SLOT in POOL6 (a ULA prefix of
// length 48..63, e.g. fd72:6564:6972::/48), so the slot that makes the IPv4
// subnet distinct makes this one distinct too. Throws when POOL6 is not such
// a prefix or has no /64 numbered SLOT.
struct Subnet6 {
    std::string subnet;        // "P:slot::/64"
    std::string host_addr;     // P:slot::1, the agent's end
    std::string sandbox_addr;  // P:slot::2, the sandbox's end
};
Subnet6 subnet6_of(const std::string& pool6, uint32_t slot);

// Dotted text of a host-order IPv4 address.
std::string ipv4_text(uint32_t host_order);

}  // namespace redir::netns
