#pragma once
#include <cstdint>
#include <string>

#include "redir/types.h"

namespace redir::agent {

// Who a redirected connection came from and where it was going, as the
// kernel recorded it at connect() time.
struct ConnInfo {
    redir_addr orig_addr{};
    uint16_t orig_port = 0;
    uint32_t pid = 0;
    uint64_t cgroup_id = 0;  // the attached (sandbox) cgroup
    uint32_t policy_id = 0;
    std::string client;      // "ip:port" of the sandbox socket
    std::string orig;        // "ip:port" the application asked for
};

}  // namespace redir::agent
