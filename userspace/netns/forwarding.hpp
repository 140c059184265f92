#pragma once
// Per-interface IP sysctls (net.ipv4/ipv6.conf.IF.*) in the calling thread's
// namespace. Forwarding: a packet is forwarded only if it arrived on an
// interface that forwards, so the sandbox's veth end and the uplinks its
// answers come back on need it, and no other interface changes. IPv6 has no
// per-interface switch before Linux 6.17 (force_forwarding); the global one
// would turn every interface into a router (no more router advertisements
// accepted on the node's uplinks), so it is never touched here.
#include <string>

namespace redir::netns {

// Turns IPv4 forwarding on for IFNAME; returns whether it was off before.
bool enable_forwarding(const std::string& ifname);
bool forwarding_enabled(const std::string& ifname);

// IPv6 forwarding for packets arriving on IFNAME: already on (the global
// switch, or force_forwarding) -> false; switched on with force_forwarding ->
// true. Throws when neither is on and this kernel has no force_forwarding.
bool enable_forwarding6(const std::string& ifname);

// Writes VALUE to /proc/sys/net/ipv6/conf/IFNAME/KNOB (accept_ra, ...).
void set_ipv6_conf(const std::string& ifname, const std::string& knob, const std::string& value);

}  // namespace redir::netns
