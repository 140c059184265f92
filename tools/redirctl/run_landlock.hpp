#pragma once
// Landlock scoping for `redirctl run` sandboxes: the command's network
// namespace is the host's, and abstract unix sockets belong to the network
// namespace, not the filesystem — without this it could connect to any host
// service listening on one (X11, local proxies, container shims).
#include <string>

namespace redir::ctl {

// Scopes the calling process (and everything it starts) with Landlock
// (ABI 6+, kernel 6.12+): it may connect only to abstract unix sockets made
// inside the sandbox, and signal only processes inside it. Returns "" when
// scoped, else why not (kernel too old, Landlock not enabled) — callers
// decide whether that is fatal.
std::string scope_to_sandbox();

// Landlock ABI version of this kernel; 0 when Landlock is unavailable.
int landlock_abi();

}  // namespace redir::ctl
