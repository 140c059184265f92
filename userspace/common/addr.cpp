#include "common/addr.hpp"

#include <arpa/inet.h>

#include <cstring>

namespace redir {

redir_addr addr_from_v4(in_addr a) {
    redir_addr r{};
    r.b[10] = 0xff;
    r.b[11] = 0xff;
    std::memcpy(&r.b[12], &a.s_addr, 4);
    return r;
}

redir_addr addr_from_v6(const in6_addr& a) {
    redir_addr r{};
    std::memcpy(r.b, a.s6_addr, 16);
    return r;
}

bool addr_is_v4(const redir_addr& a) {
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return std::memcmp(a.b, prefix, 12) == 0;
}

bool addr_is_zero(const redir_addr& a) {
    for (auto b : a.b)
        if (b) return false;
    return true;
}

std::string addr_to_string(const redir_addr& a) {
    char buf[INET6_ADDRSTRLEN] = {};
    if (addr_is_v4(a))
        inet_ntop(AF_INET, &a.b[12], buf, sizeof(buf));
    else
        inet_ntop(AF_INET6, a.b, buf, sizeof(buf));
    return buf;
}

std::optional<redir_addr> addr_parse(const std::string& text) {
    in_addr v4{};
    if (inet_pton(AF_INET, text.c_str(), &v4) == 1) return addr_from_v4(v4);
    in6_addr v6{};
    if (inet_pton(AF_INET6, text.c_str(), &v6) == 1) return addr_from_v6(v6);
    return std::nullopt;
}

std::optional<redir_addr> addr_from_sockaddr(const sockaddr* sa, uint16_t* port) {
    if (sa->sa_family == AF_INET) {
        auto* s = reinterpret_cast<const sockaddr_in*>(sa);
        if (port) *port = ntohs(s->sin_port);
        return addr_from_v4(s->sin_addr);
    }
    if (sa->sa_family == AF_INET6) {
        auto* s = reinterpret_cast<const sockaddr_in6*>(sa);
        if (port) *port = ntohs(s->sin6_port);
        return addr_from_v6(s->sin6_addr);
    }
    return std::nullopt;
}

std::string endpoint_to_string(const redir_addr& a, uint16_t port) {
    if (addr_is_v4(a)) return addr_to_string(a) + ":" + std::to_string(port);
    return "[" + addr_to_string(a) + "]:" + std::to_string(port);
}

}  // namespace redir
