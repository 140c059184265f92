// IPv4 forwarding per interface through /proc/sys/net/ipv4/conf/IF/forwarding.
#include "forwarding.hpp"

#include <fcntl.h>
#include <unistd.h>

#include "common/error.hpp"
#include "common/fd.hpp"

namespace redir::netns {
namespace {

std::string knob(const std::string& ifname) {
    if (ifname.empty() || ifname.find('/') != std::string::npos || ifname == "." || ifname == "..")
        throw Error("'" + ifname + "' is not an interface name");
    return "/proc/sys/net/ipv4/conf/" + ifname + "/forwarding";
}

}  // namespace

bool forwarding_enabled(const std::string& ifname) {
    UniqueFd fd(::open(knob(ifname).c_str(), O_RDONLY | O_CLOEXEC));
    char c = '0';
    if (!fd || ::read(fd.get(), &c, 1) != 1) throw sys_error("cannot read " + knob(ifname));
    return c == '1';
}

bool enable_forwarding(const std::string& ifname) {
    if (forwarding_enabled(ifname)) return false;
    UniqueFd fd(::open(knob(ifname).c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd || ::write(fd.get(), "1", 1) != 1) throw sys_error("cannot enable IPv4 forwarding in " + knob(ifname));
    return true;
}

}  // namespace redir::netns
