// Network namespace cookies via SO_NETNS_COOKIE.
#include "common/netns_cookie.hpp"

#include <sys/socket.h>

#include "common/error.hpp"
#include "common/fd.hpp"

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

namespace redir {

uint64_t socket_netns_cookie(int fd) {
    uint64_t cookie = 0;
    socklen_t len = sizeof(cookie);
    if (::getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len) != 0)
        throw sys_error("cannot read the network namespace cookie of a socket (kernel 5.14+ needed)");
    return cookie;
}

uint64_t current_netns_cookie() {
    UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!s) throw sys_error("cannot create a socket to read the network namespace cookie");
    return socket_netns_cookie(s.get());
}

}  // namespace redir
