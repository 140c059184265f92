#pragma once
// `attach --netns PATH [--redirect-via IP[%DEV]]` resolved into where that
// sandbox's redirects land: the agent's address(es) on its side of the veth,
// the interface holding them in the agent's namespace, the namespace's cookie.
#include <string>

#include "enforce/sandbox.hpp"

namespace redir::agent {

// REDIRECT_VIA is "IP[%DEV][,IP[%DEV]]", at most one address per IP version,
// both on one interface. Without it the namespace's default-route gateways
// (rtnetlink, IPv4 and IPv6; link-local ones skipped) are the addresses. A
// family still missing is the interface's first global address of it, if any. A namespace that is the agent's own gives the default target
// (loopback). Throws one actionable sentence when nothing fits.
enforce::RedirectTarget resolve_redirect_target(const std::string& netns_path, const std::string& redirect_via);

}  // namespace redir::agent
