#pragma once
// `redirctl run`: a transient sandbox around one command, from before its
// first instruction until nothing in it is left.
#include <string>
#include <vector>

namespace redir::ctl {

struct RunOptions {
    std::string socket_path;
    std::string policy;               // NAME or FILE; empty: inference only
    std::string user;                 // --user USER[:GROUP]; empty: sudo caller, else nobody
    std::vector<std::string> command;
    bool netns = false;      // --netns: its own network namespace (run_netns.hpp)
    std::string netns_pool;  // --netns-pool CIDR; empty: $REDIR_NETNS_POOL, else the default
    std::string netns_pool6;  // --netns-pool6 CIDR or "none"; empty: $REDIR_NETNS_POOL6, else the default
};

// Runs the command sandboxed; returns its exit code (128+signal when killed),
// or 125 when run itself failed before the command could start.
int run_sandboxed(const RunOptions& opts);

}  // namespace redir::ctl
