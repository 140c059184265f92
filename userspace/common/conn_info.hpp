#pragma once
// Who made a redirected connection and where it was going: the one record the
// listeners fill from the kernel and the relay, the terminator and its access
// log all read.
#include <cstdint>
#include <string>

#include "redir/types.h"

namespace redir {

struct ConnInfo {
    uint64_t cgroup_id = 0;  // the attached (sandbox) cgroup
    uint32_t pid = 0;        // process that connected
    std::string client;      // "ip:port" of the sandbox socket
    std::string orig;        // "ip:port" the application asked for
    redir_addr orig_addr{};
    uint16_t orig_port = 0;
    uint32_t policy_id = 0;
};

}  // namespace redir
