// What the agent checks about processes and files so that nothing inside a
// sandbox can switch it off.
#include "agent/containment.hpp"

#include <fcntl.h>
#include <linux/capability.h>
#include <linux/nsfs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.hpp"
#include "loader/cgroup.hpp"

namespace fs = std::filesystem;

namespace redir::agent {
namespace {

struct CapName {
    int cap;
    const char* name;
};

// Each one can detach programs, leave the cgroup, edit maps or pins, read
// the agent's secrets, or send packets no socket hook sees.
constexpr CapName kBreaking[] = {
    {CAP_SYS_ADMIN, "CAP_SYS_ADMIN"},     {CAP_NET_ADMIN, "CAP_NET_ADMIN"},
    {CAP_NET_RAW, "CAP_NET_RAW"},         {39 /* CAP_BPF */, "CAP_BPF"},
    {38 /* CAP_PERFMON */, "CAP_PERFMON"}, {CAP_SYS_PTRACE, "CAP_SYS_PTRACE"},
    {CAP_SYS_MODULE, "CAP_SYS_MODULE"},   {CAP_DAC_OVERRIDE, "CAP_DAC_OVERRIDE"},
    {CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"}, {CAP_FOWNER, "CAP_FOWNER"},
    {CAP_CHOWN, "CAP_CHOWN"},             {CAP_SETUID, "CAP_SETUID"},
    {CAP_SETGID, "CAP_SETGID"},           {CAP_SETPCAP, "CAP_SETPCAP"},
    {CAP_SYS_RAWIO, "CAP_SYS_RAWIO"},     {CAP_SYS_CHROOT, "CAP_SYS_CHROOT"},
    {CAP_MKNOD, "CAP_MKNOD"},             {CAP_SYS_BOOT, "CAP_SYS_BOOT"},
};

// What a user namespace's root can do in a network namespace it owns: send
// packets no socket hook sees, reroute or readdress the sandbox.
constexpr uint64_t kNetworkCaps = (1ULL << CAP_NET_RAW) | (1ULL << CAP_NET_ADMIN);

std::string user_ns(const std::string& pid) {
    std::error_code ec;
    return fs::read_symlink("/proc/" + pid + "/ns/user", ec).string();
}

// Whether PID's user namespace owns its network namespace or an ancestor of
// that owner: then its CAP_NET_RAW/CAP_NET_ADMIN count there (a rootless or
// user-namespaced container's root can open packet sockets in its own netns).
// Unknown counts as yes: flagged, not missed.
bool owns_its_network_namespace(const std::string& pid) {
    struct stat mine {};
    if (::stat(("/proc/" + pid + "/ns/user").c_str(), &mine) != 0) return true;
    int fd = ::open(("/proc/" + pid + "/ns/net").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return true;
    int owner = ::ioctl(fd, NS_GET_USERNS);
    ::close(fd);
    if (owner < 0) return true;
    // Up the owner's ancestry (the kernel stops at the agent's own namespace).
    for (int depth = 0; owner >= 0 && depth < 33; ++depth) {
        struct stat st {};
        bool same = ::fstat(owner, &st) == 0 && st.st_ino == mine.st_ino && st.st_dev == mine.st_dev;
        int parent = same ? -1 : ::ioctl(owner, NS_GET_PARENT);
        ::close(owner);
        if (same) return true;
        owner = parent;
    }
    return false;
}

// What PID holds or can take back without help, from /proc/PID/status:
// its effective and permitted sets, and — while any of its uids is 0 — its
// bounding set, which an exec as uid 0 turns into effective capabilities.
// nullopt once the process is gone.
std::optional<uint64_t> reachable_caps(const std::string& pid) {
    std::ifstream in("/proc/" + pid + "/status");
    std::string line;
    uint64_t eff = 0, prm = 0, bnd = 0;
    bool uid0 = false, seen = false;
    auto hex = [&](size_t at) { return std::stoull(line.substr(at), nullptr, 16); };
    while (std::getline(in, line)) {
        if (line.rfind("CapEff:", 0) == 0) eff = hex(7), seen = true;
        if (line.rfind("CapPrm:", 0) == 0) prm = hex(7);
        if (line.rfind("CapBnd:", 0) == 0) bnd = hex(7);
        if (line.rfind("Uid:", 0) == 0) {
            std::istringstream ss(line.substr(4));
            unsigned long r = 1, e = 1, s = 1;
            ss >> r >> e >> s;
            uid0 = r == 0 || e == 0 || s == 0;
        }
    }
    if (!seen) return std::nullopt;
    return eff | prm | (uid0 ? bnd : 0);
}

}  // namespace

std::optional<std::string> process_cgroup(pid_t pid) {
    auto mnt = loader::find_cgroup2_mount();
    if (!mnt) return std::nullopt;
    std::ifstream in("/proc/" + std::to_string(pid) + "/cgroup");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("0::/", 0) == 0) return *mnt + (line.size() > 4 ? line.substr(3) : std::string());
    return std::nullopt;
}

std::vector<uint64_t> cgroup_lineage_ids(const std::string& cgroup) {
    std::vector<uint64_t> out;
    auto mnt = loader::find_cgroup2_mount();
    if (!mnt) return out;
    fs::path p(cgroup);
    for (;;) {
        if (auto id = loader::cgroup_id_of(p.string())) out.push_back(*id);
        if (p.string().size() <= mnt->size() || !p.has_parent_path()) break;
        p = p.parent_path();
    }
    return out;
}

uint64_t enforcement_breaking_caps() {
    uint64_t m = 0;
    for (auto& c : kBreaking) m |= 1ULL << c.cap;
    return m;
}

std::vector<std::string> cap_names(uint64_t mask) {
    std::vector<std::string> out;
    for (auto& c : kBreaking)
        if (mask & (1ULL << c.cap)) out.emplace_back(c.name);
    return out;
}

std::string capable_warning(const std::string& cgroup, const std::vector<CapableProcess>& procs) {
    std::string who;
    for (auto& p : procs) {
        auto names = cap_names(p.caps);
        std::string caps;
        for (auto& n : names) caps += (caps.empty() ? "" : ",") + n;
        who += (who.empty() ? "" : "; ") + std::string("pid ") + std::to_string(p.pid) + " (" + p.comm + ") holds " + caps;
    }
    return "sandbox " + cgroup + " holds processes with capabilities that can undo its enforcement (" + who +
           "); run sandboxed commands unprivileged (`redirctl run --user`) or drop those capabilities";
}

std::vector<CapableProcess> capable_processes(const std::string& cgroup, size_t limit) {
    std::vector<CapableProcess> out;
    // Init's user namespace; where /proc/1 is not readable (a container's
    // init holding more than we do), the agent's own, which is the host's.
    std::string host_ns = user_ns("1");
    if (host_ns.empty()) host_ns = user_ns("self");
    std::vector<std::string> dirs{cgroup};
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(cgroup, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
        if (it->is_directory(ec) && !it->is_symlink(ec)) dirs.push_back(it->path().string());
    for (auto& d : dirs) {
        std::ifstream in(d + "/cgroup.procs");
        std::string pid;
        while (in >> pid && out.size() < limit) {
            auto caps = reachable_caps(pid);
            if (!caps || !(*caps & enforcement_breaking_caps())) continue;
            // Capabilities count only in the namespace they are held in
            // (an unreadable namespace counts as the host's: flagged, not
            // missed), and a network namespace that namespace owns.
            uint64_t counted = *caps & enforcement_breaking_caps();
            if (auto ns = user_ns(pid); !ns.empty() && ns != host_ns)
                counted &= owns_its_network_namespace(pid) ? kNetworkCaps : 0;
            if (!counted) continue;
            CapableProcess p;
            p.pid = static_cast<pid_t>(std::stol(pid));
            std::ifstream comm("/proc/" + pid + "/comm");
            std::getline(comm, p.comm);
            p.caps = counted;
            out.push_back(std::move(p));
        }
    }
    return out;
}

bool make_private_tree(const std::string& dir, const std::string& what) {
    struct stat st {};
    if (::lstat(dir.c_str(), &st) != 0) throw sys_error("cannot inspect " + what + " " + dir);
    if (!S_ISDIR(st.st_mode))
        throw Error(what + " " + dir + " is not a directory (a symlink or file?); point the option at a directory");
    if (st.st_uid != 0)
        throw Error(what + " " + dir + " is owned by uid " + std::to_string(st.st_uid) +
                    ", not root: its owner could read or replace what redird keeps there; "
                    "`chown -R root:root` it or choose another directory");
    bool was_open = (st.st_mode & 077) != 0;
    if (was_open && ::chmod(dir.c_str(), st.st_mode & 07700) != 0)
        throw sys_error("cannot make " + what + " " + dir + " private (chmod 0700)");
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec)) {
        struct stat es {};
        const std::string p = it->path().string();
        if (::lstat(p.c_str(), &es) != 0 || S_ISLNK(es.st_mode) || S_ISSOCK(es.st_mode)) continue;
        if ((es.st_mode & 077) && ::chmod(p.c_str(), es.st_mode & 07700) != 0)
            throw sys_error("cannot make " + p + " private to root");
    }
    if (ec) throw Error("cannot walk " + what + " " + dir + ": " + ec.message());
    return was_open;
}

}  // namespace redir::agent
