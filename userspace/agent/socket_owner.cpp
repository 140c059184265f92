#include "agent/socket_owner.hpp"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "common/addr.hpp"

namespace fs = std::filesystem;

namespace redir::agent {
namespace {

// /proc/net/* prints addresses as the kernel's 32-bit words in host order.
bool parse_proc_addr(const std::string& field, redir_addr& out, uint16_t& port) {
    auto colon = field.find(':');
    if (colon == std::string::npos) return false;
    std::string hex = field.substr(0, colon);
    port = static_cast<uint16_t>(std::stoul(field.substr(colon + 1), nullptr, 16));
    if (hex.size() == 8) {
        in_addr a{};
        a.s_addr = static_cast<uint32_t>(std::stoul(hex, nullptr, 16));
        out = addr_from_v4(a);
        return true;
    }
    if (hex.size() == 32) {
        in6_addr a{};
        for (int w = 0; w < 4; w++) {
            uint32_t word = static_cast<uint32_t>(std::stoul(hex.substr(w * 8, 8), nullptr, 16));
            std::memcpy(&a.s6_addr[w * 4], &word, 4);
        }
        out = addr_from_v6(a);
        // A v4 socket seen through a v6 table collapses to the same form.
        return true;
    }
    return false;
}

bool same(const redir_addr& a, const redir_addr& b) { return std::memcmp(a.b, b.b, 16) == 0; }

std::optional<uint64_t> find_inode(bool tcp, const redir_addr& local, uint16_t lport, const redir_addr& remote,
                                   uint16_t rport) {
    for (const char* table : tcp ? std::vector<const char*>{"/proc/net/tcp", "/proc/net/tcp6"}
                                 : std::vector<const char*>{"/proc/net/udp", "/proc/net/udp6"}) {
        std::ifstream in(table);
        std::string line;
        std::getline(in, line);  // header
        while (std::getline(in, line)) {
            std::istringstream ss(line);
            std::string sl, l, r, st, q, tm, retr, uid, timeout, inode;
            ss >> sl >> l >> r >> st >> q >> tm >> retr >> uid >> timeout >> inode;
            redir_addr la{}, ra{};
            uint16_t lp = 0, rp = 0;
            try {
                if (!parse_proc_addr(l, la, lp) || !parse_proc_addr(r, ra, rp)) continue;
            } catch (...) {
                continue;
            }
            if (lp != lport || !same(la, local)) continue;
            if (rp != 0 && (rp != rport || !same(ra, remote))) continue;
            try {
                return std::stoull(inode);
            } catch (...) {
                continue;
            }
        }
    }
    return std::nullopt;
}

// Iterators advanced with error codes only: a cgroup or a process vanishing
// mid-scan ends that branch of the scan, it never throws.
void collect_pids(const fs::path& cg, std::vector<uint32_t>& out, size_t max_pids, int depth = 0) {
    if (out.size() >= max_pids || depth > 32) return;
    std::ifstream in(cg / "cgroup.procs");
    uint32_t pid;
    while (out.size() < max_pids && in >> pid) out.push_back(pid);
    std::error_code ec;
    fs::directory_iterator it(cg, ec), end;
    for (; !ec && it != end; it.increment(ec)) {
        std::error_code ec2;
        if (it->is_directory(ec2)) collect_pids(it->path(), out, max_pids, depth + 1);
    }
}

}  // namespace

std::optional<ProcessInfo> find_socket_owner(bool tcp, const redir_addr& local, uint16_t local_port,
                                             const redir_addr& remote, uint16_t remote_port,
                                             const std::string& cgroup_path, const ScanLimits& limits) noexcept {
    try {
        auto inode = find_inode(tcp, local, local_port, remote, remote_port);
        if (!inode) return std::nullopt;
        std::string want = "socket:[" + std::to_string(*inode) + "]";
        std::vector<uint32_t> pids;
        collect_pids(cgroup_path, pids, limits.max_pids);
        size_t fds_seen = 0;
        for (auto pid : pids) {
            std::error_code ec;
            fs::directory_iterator it("/proc/" + std::to_string(pid) + "/fd", ec), end;
            for (; !ec && it != end; it.increment(ec)) {
                if (++fds_seen > limits.max_fds) return std::nullopt;
                std::error_code ec2;
                if (fs::read_symlink(it->path(), ec2).string() != want) continue;
                ProcessInfo p;
                p.pid = pid;
                std::ifstream c("/proc/" + std::to_string(pid) + "/comm");
                std::getline(c, p.comm);
                return p;
            }
        }
    } catch (...) {
        // Out of memory or an unexpected /proc format: the record goes without a pid.
    }
    return std::nullopt;
}

}  // namespace redir::agent
