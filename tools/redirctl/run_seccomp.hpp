#pragma once
// The seccomp filter of `redirctl run` sandboxes: only socket families the
// kernel hooks govern, and no io_uring, on any kernel.
#include <string>

#include "loader/features.hpp"

namespace redir::ctl {

// Families a sandboxed command may open: unix, netlink, and inet/inet6
// (which the cgroup programs decide). Everything else — packet, vsock, XDP,
// Bluetooth, CAN, TIPC, RDS… — reaches past every inet hook.
inline constexpr int kRunSocketFamilies[] = {1 /* AF_UNIX */, 2 /* AF_INET */, 10 /* AF_INET6 */,
                                             16 /* AF_NETLINK */};

// Installs the filter on the calling thread (inherited by every child and
// kept across exec): socket()/socketpair() with any other family and
// io_uring_setup/enter/register (IORING_OP_SOCKET/CONNECT would skip the
// socket() rule), setsockopt of source routes (IP_OPTIONS, IPV6_RTHDR,
// IPV6_2292RTHDR, IPV6_2292PKTOPTIONS: only the first hop is judged) and
// ioctl TIOCSTI/TIOCLINUX (typing into the user's terminal) fail with EPERM; syscalls of another ABI (i386, x32) kill
// the process. Needs no_new_privs or CAP_SYS_ADMIN. Returns "" or what failed.
std::string install_run_seccomp();

// doctor's line about what `run` sandboxes refuse on this kernel.
loader::FeatureCheck run_sandbox_check();

}  // namespace redir::ctl
