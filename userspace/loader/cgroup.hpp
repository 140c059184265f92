#pragma once
// cgroup v2 discovery and identity. The kernel's maps are keyed by cgroup id,
// which is the cgroup directory's file handle on cgroup2.
#include <cstdint>
#include <optional>
#include <string>

#include "common/fd.hpp"

namespace redir::loader {

// Mount point of the cgroup2 hierarchy from /proc/mounts (e.g. /sys/fs/cgroup
// or /sys/fs/cgroup/unified on hybrid hosts); nullopt if there is none.
std::optional<std::string> find_cgroup2_mount();

struct Cgroup {
    std::string path;  // canonical absolute path
    uint64_t id = 0;
    UniqueFd fd;       // O_DIRECTORY fd for attaching programs
};

// Opens a cgroup v2 directory. Throws redir::Error with one clear sentence
// when the path does not exist, is not a directory, or is on cgroup v1.
Cgroup open_cgroup(const std::string& path);

// The cgroup id of the cgroup2 directory PATH (its file handle, the value
// bpf_get_current_cgroup_id() returns); nullopt when it cannot be read.
std::optional<uint64_t> cgroup_id_of(const std::string& path);

// Cgroup id of the calling process's own cgroup (from /proc/self/cgroup).
std::optional<std::string> current_cgroup_path();

}  // namespace redir::loader
