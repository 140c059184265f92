#pragma once
// The 16-byte address form used in every map (v4 as v4-mapped v6), and its
// conversions to and from text and socket addresses.
#include <netinet/in.h>
#include <sys/socket.h>

#include <optional>
#include <string>

#include "redir/types.h"

namespace redir {

redir_addr addr_from_v4(in_addr a);
redir_addr addr_from_v6(const in6_addr& a);
bool addr_is_v4(const redir_addr& a);
// All zero: no address (unset targets in the maps).
bool addr_is_zero(const redir_addr& a);
// "203.0.113.5" for v4-mapped, "2001:db8::1" otherwise.
std::string addr_to_string(const redir_addr& a);
std::optional<redir_addr> addr_parse(const std::string& text);
// From a sockaddr_in / sockaddr_in6 (v4-mapped v6 socket addresses collapse to v4).
std::optional<redir_addr> addr_from_sockaddr(const sockaddr* sa, uint16_t* port_host_order);
// "ip:port" or "[ip6]:port".
std::string endpoint_to_string(const redir_addr& a, uint16_t port);

}  // namespace redir
