#pragma once
// Ending a sandbox: every process in a cgroup subtree killed, then the subtree
// removed — nothing may outlive the sandbox once it is detached.
#include <chrono>
#include <string>
#include <sys/types.h>
#include <vector>

namespace redir::ctl {

// Pids in CGROUP and every cgroup below it (from cgroup.procs).
std::vector<pid_t> subtree_pids(const std::string& cgroup);

// True once CGROUP and its descendants hold no live process (cgroup.events
// "populated 0"; a vanished cgroup counts as empty).
bool subtree_empty(const std::string& cgroup);

// Kills everything in CGROUP's subtree and waits up to TIMEOUT until it is
// empty: cgroup.kill where the kernel has it (5.14+), else freeze, SIGKILL
// each pid, thaw, repeat. USE_CGROUP_KILL false forces the fallback (tests).
// Returns whether the subtree is empty.
bool kill_subtree(const std::string& cgroup, std::chrono::milliseconds timeout, bool use_cgroup_kill = true);

// Removes CGROUP and its descendant directories, deepest first.
bool remove_subtree(const std::string& cgroup);

// Sandboxes `run` left behind when it was SIGKILLed: directories
// MOUNT/redir-run-PID whose PID is no live redirctl and whose subtree holds no
// process (they stay attached, enforced and empty until swept).
std::vector<std::string> abandoned_run_sandboxes(const std::string& mount);

}  // namespace redir::ctl
