#pragma once
// IPv4 forwarding per interface (net.ipv4.conf.IF.forwarding) in the calling
// thread's namespace: a packet is forwarded only if it arrived on an
// interface that forwards, so the sandbox's veth end and the uplinks its
// answers come back on need it, and no other interface changes.
#include <string>

namespace redir::netns {

// Turns forwarding on for IFNAME; returns whether it was off before.
bool enable_forwarding(const std::string& ifname);
bool forwarding_enabled(const std::string& ifname);

}  // namespace redir::netns
