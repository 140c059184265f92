#pragma once
// Which process owns a sandbox socket, for audit records of events the kernel
// did not see (a DNS query refused by the responder arrives as a datagram; the
// process behind it is found from its source address).
#include <cstdint>
#include <optional>
#include <string>

#include "redir/types.h"

namespace redir::agent {

struct ProcessInfo {
    uint32_t pid = 0;
    std::string comm;
};

// The process in CGROUP_PATH (or a descendant) holding the socket whose local
// end is LOCAL:LOCAL_PORT and remote end REMOTE:REMOTE_PORT (remote may be
// unspecified for unconnected UDP). Looks the socket's inode up in
// /proc/net/{tcp,udp}{,6} of the agent's namespace, then the sandbox's
// processes' fds. nullopt when it is gone, lives in another namespace, or the
// scan would pass LIMITS (a sandbox with huge numbers of processes or fds
// costs the agent a bounded amount per lookup). Never throws: processes exit
// mid-scan all the time. Slow (reads /proc): call it off the io thread.
struct ScanLimits {
    size_t max_pids = 4096;
    size_t max_fds = 65536;
};
std::optional<ProcessInfo> find_socket_owner(bool tcp, const redir_addr& local, uint16_t local_port,
                                             const redir_addr& remote, uint16_t remote_port,
                                             const std::string& cgroup_path, const ScanLimits& limits = {}) noexcept;

}  // namespace redir::agent
