// A /30 of a pool held by one process through an flock'ed file.
#include "subnet_lease.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <filesystem>

#include "common/cidr.hpp"
#include "common/error.hpp"

namespace redir::netns {
namespace {

uint32_t v4_of(const Addr& a) {
    return (uint32_t(a[12]) << 24) | (uint32_t(a[13]) << 16) | (uint32_t(a[14]) << 8) | uint32_t(a[15]);
}

// The lock held on PATH's current file: another holder may have unlinked the
// file we opened between our open and our flock.
UniqueFd try_lock(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!fd) throw sys_error("cannot open subnet lock " + path);
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK) return UniqueFd();
        throw sys_error("cannot lock " + path);
    }
    struct stat held {}, now {};
    if (::fstat(fd.get(), &held) != 0 || ::stat(path.c_str(), &now) != 0 || held.st_ino != now.st_ino)
        return UniqueFd();
    return fd;
}

}  // namespace

std::string ipv4_text(uint32_t host_order) {
    in_addr a{htonl(host_order)};
    char buf[INET_ADDRSTRLEN];
    return ::inet_ntop(AF_INET, &a, buf, sizeof(buf));
}

SubnetLease SubnetLease::acquire(const std::string& pool, const std::string& lock_dir, uint32_t first) {
    auto p = parse_cidr(pool);
    if (!p.cidr || !p.cidr->v4 || p.cidr->len - 96 > kPrefix)
        throw Error("subnet pool '" + pool + "' must be an IPv4 prefix of length 30 or less, e.g. 10.250.0.0/16" +
                    (p.error.empty() ? "" : " (" + p.error + ")"));
    std::error_code ec;
    std::filesystem::create_directories(lock_dir, ec);
    ::chmod(lock_dir.c_str(), 0700);
    uint32_t base = v4_of(p.cidr->addr);
    uint32_t slots = 1u << (kPrefix - (p.cidr->len - 96));
    for (uint32_t slot = first; slot < slots; ++slot) {
        uint32_t net = base + (slot << (32 - kPrefix));
        std::string path = lock_dir + "/" + ipv4_text(net) + ".lock";
        if (UniqueFd fd = try_lock(path)) return SubnetLease(slot, net, std::move(fd), path);
        // Retry once: a racing holder may just have unlinked the file.
        if (UniqueFd fd = try_lock(path)) return SubnetLease(slot, net, std::move(fd), path);
    }
    throw Error("every /30 of subnet pool " + pool + " is in use (" + std::to_string(slots) +
                " sandboxes); end some or choose a larger pool");
}

SubnetLease::SubnetLease(SubnetLease&& o) noexcept
    : slot_(o.slot_), base_(o.base_), lock_(std::move(o.lock_)), path_(std::exchange(o.path_, {})) {}

SubnetLease::~SubnetLease() {
    // Unlinked while still locked: a waiter that opened it re-checks the inode.
    if (lock_ && !path_.empty()) ::unlink(path_.c_str());
}

Subnet6 subnet6_of(const std::string& pool6, uint32_t slot) {
    auto p = parse_cidr(pool6);
    if (!p.cidr || p.cidr->v4 || p.cidr->len < 48 || p.cidr->len > 63)
        throw Error("IPv6 subnet pool '" + pool6 + "' must be an IPv6 prefix of length 48 to 63, e.g. fd72:6564:6972::/48" +
                    (p.error.empty() ? "" : " (" + p.error + ")"));
    const unsigned bits = 64 - p.cidr->len;
    if (bits < 32 && slot >= (1u << bits))
        throw Error("IPv6 subnet pool " + pool6 + " has no /64 number " + std::to_string(slot) +
                    "; choose a shorter prefix (e.g. a /48)");
    Addr a = p.cidr->addr;
    // The slot goes in the last bits of the /64's network part (bytes 4..7).
    uint64_t net = 0;
    for (int i = 0; i < 8; ++i) net = (net << 8) | a[i];
    net |= slot;
    for (int i = 7; i >= 0; --i, net >>= 8) a[i] = static_cast<uint8_t>(net & 0xff);
    Subnet6 s;
    s.subnet = addr_to_string(a) + "/64";
    a[15] = 1;
    s.host_addr = addr_to_string(a);
    a[15] = 2;
    s.sandbox_addr = addr_to_string(a);
    return s;
}

std::string SubnetLease::subnet() const { return ipv4_text(base_) + "/" + std::to_string(kPrefix); }
std::string SubnetLease::host_addr() const { return ipv4_text(base_ + 1); }
std::string SubnetLease::sandbox_addr() const { return ipv4_text(base_ + 2); }

}  // namespace redir::netns
