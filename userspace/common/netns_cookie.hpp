#pragma once
// Network namespace cookies: the identity the kernel programs see
// (bpf_get_netns_cookie) and key redirected connections with.
#include <cstdint>
#include <string>

namespace redir {

// Cookie of the namespace socket FD lives in (SO_NETNS_COOKIE, kernel 5.14+). Throws.
uint64_t socket_netns_cookie(int fd);
// Cookie of the calling thread's network namespace. Throws.
uint64_t current_netns_cookie();
}  // namespace redir
