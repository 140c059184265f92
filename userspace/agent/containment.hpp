#pragma once
// What the agent checks about processes and files so that nothing inside a
// sandbox can switch it off: control peers inside sandboxes, sandboxed
// processes holding capabilities that undo enforcement, and the privacy of
// the agent's own directories.
#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace redir::agent {

// Absolute cgroup v2 directory of process PID (from /proc/PID/cgroup, read in
// the agent's cgroup namespace); nullopt when it cannot be read.
std::optional<std::string> process_cgroup(pid_t pid);

// Cgroup ids of CGROUP and each ancestor up to the cgroup2 mount, nearest first.
std::vector<uint64_t> cgroup_lineage_ids(const std::string& cgroup);

// Capabilities that let a process undo enforcement or reach around the hooks.
uint64_t enforcement_breaking_caps();
// {"CAP_SYS_ADMIN", "CAP_NET_RAW", ...} for the enforcement-breaking bits of MASK.
std::vector<std::string> cap_names(uint64_t mask);

// One sentence naming the processes of sandbox CGROUP in PROCS and what they hold.
std::string capable_warning(const std::string& cgroup, const std::vector<struct CapableProcess>& procs);

struct CapableProcess {
    pid_t pid = 0;
    std::string comm;
    uint64_t caps = 0;  // enforcement-breaking part of CapEff|CapPrm (|CapBnd while a uid is 0)
};

// Processes in CGROUP's subtree that hold an enforcement-breaking capability
// in the initial user namespace, or can take one back (permitted set; the
// bounding set of a uid-0 process, which exec restores). Root of a user
// namespace of its own holds none there and is not listed. At most LIMIT.
std::vector<CapableProcess> capable_processes(const std::string& cgroup, size_t limit = 32);

// Makes DIR and everything below it private to root: it must be owned by
// root (else Error, one sentence), group/other permission bits are removed.
// Returns true when DIR itself was open to others (worth a warning).
bool make_private_tree(const std::string& dir, const std::string& what);

}  // namespace redir::agent
