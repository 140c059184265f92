#include "loader/cgroup.hpp"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.hpp"

namespace redir::loader {

std::optional<std::string> find_cgroup2_mount() {
    std::ifstream in("/proc/mounts");
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream ss(line);
        std::string dev, mnt, type;
        ss >> dev >> mnt >> type;
        if (type == "cgroup2") return mnt;
    }
    return std::nullopt;
}

Cgroup open_cgroup(const std::string& path) {
    std::error_code ec;
    auto canon = std::filesystem::canonical(path, ec);
    if (ec) throw Error("cgroup " + path + " does not exist (" + ec.message() + ")");
    Cgroup cg;
    cg.path = canon.string();
    cg.fd = UniqueFd(::open(cg.path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!cg.fd) throw sys_error("cannot open cgroup directory " + cg.path);
    struct statfs sfs {};
    if (::fstatfs(cg.fd.get(), &sfs) != 0) throw sys_error("cannot statfs " + cg.path);
    if (sfs.f_type != CGROUP2_SUPER_MAGIC) {
        auto mnt = find_cgroup2_mount();
        throw Error(cg.path + " is not a cgroup v2 directory" +
                    (sfs.f_type == CGROUP_SUPER_MAGIC ? " (it is on cgroup v1)" : "") +
                    "; use a cgroup under " + (mnt ? *mnt : std::string("a cgroup2 mount")));
    }
    auto id = cgroup_id_of(cg.path);
    if (!id) throw sys_error("cannot read the cgroup id of " + cg.path);
    cg.id = *id;
    return cg;
}

std::optional<uint64_t> cgroup_id_of(const std::string& path) {
    // On cgroup2 the file handle of the directory is the 64-bit cgroup id.
    struct {
        struct file_handle fh;
        uint64_t id;
    } h{};
    h.fh.handle_bytes = sizeof(uint64_t);
    int mount_id = 0;
    if (::name_to_handle_at(AT_FDCWD, path.c_str(), &h.fh, &mount_id, 0) != 0) return std::nullopt;
    uint64_t id;
    std::memcpy(&id, h.fh.f_handle, sizeof(id));
    return id;
}

std::optional<std::string> current_cgroup_path() {
    std::ifstream in("/proc/self/cgroup");
    std::string line;
    auto mnt = find_cgroup2_mount();
    if (!mnt) return std::nullopt;
    while (std::getline(in, line)) {
        if (line.rfind("0::", 0) == 0) return *mnt + line.substr(3);
    }
    return std::nullopt;
}

}  // namespace redir::loader
