// Per-interface IP sysctls through /proc/sys/net/ipv{4,6}/conf/IF/KNOB.
#include "forwarding.hpp"

#include <fcntl.h>
#include <unistd.h>

#include "common/error.hpp"
#include "common/fd.hpp"

namespace redir::netns {
namespace {

std::string knob(const char* family, const std::string& ifname, const std::string& name) {
    if (ifname.empty() || ifname.find('/') != std::string::npos || ifname == "." || ifname == "..")
        throw Error("'" + ifname + "' is not an interface name");
    return std::string("/proc/sys/net/") + family + "/conf/" + ifname + "/" + name;
}

bool read_flag(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    char c = '0';
    if (!fd || ::read(fd.get(), &c, 1) != 1) throw sys_error("cannot read " + path);
    return c == '1';
}

void write_value(const std::string& path, const std::string& value, const std::string& what) {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd || ::write(fd.get(), value.data(), value.size()) != static_cast<ssize_t>(value.size()))
        throw sys_error("cannot " + what + " in " + path);
}

}  // namespace

bool forwarding_enabled(const std::string& ifname) { return read_flag(knob("ipv4", ifname, "forwarding")); }

bool enable_forwarding(const std::string& ifname) {
    if (forwarding_enabled(ifname)) return false;
    write_value(knob("ipv4", ifname, "forwarding"), "1", "enable IPv4 forwarding");
    return true;
}

bool enable_forwarding6(const std::string& ifname) {
    if (read_flag(knob("ipv6", "all", "forwarding"))) return false;
    const std::string force = knob("ipv6", ifname, "force_forwarding");
    if (::access(force.c_str(), F_OK) != 0)
        throw Error("IPv6 forwarding is off (net.ipv6.conf.all.forwarding=0) and this kernel has no per-interface "
                    "switch (force_forwarding, Linux 6.17+) for " + ifname +
                    "; set net.ipv6.conf.all.forwarding=1 if this node may route IPv6 for its sandboxes");
    if (read_flag(force)) return false;
    write_value(force, "1", "enable IPv6 forwarding");
    return true;
}

void set_ipv6_conf(const std::string& ifname, const std::string& name, const std::string& value) {
    write_value(knob("ipv6", ifname, name), value, "set " + name + " to " + value);
}

}  // namespace redir::netns
