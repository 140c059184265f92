// Ending a sandbox: every process in a cgroup subtree killed, then the subtree
// removed — nothing may outlive the sandbox once it is detached.
#include "sandbox_reaper.hpp"

#include "common/fd.hpp"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

namespace fs = std::filesystem;

namespace redir::ctl {
namespace {

using Clock = std::chrono::steady_clock;

bool write_control(const std::string& file, const char* value) {
    redir::UniqueFd fd(::open(file.c_str(), O_WRONLY | O_CLOEXEC));
    return fd && ::write(fd.get(), value, std::strlen(value)) == static_cast<ssize_t>(std::strlen(value));
}

// Value of KEY in a "key value" file such as cgroup.events; -1 if absent.
long keyed_value(const std::string& file, const std::string& key) {
    std::ifstream in(file);
    std::string k;
    long v;
    while (in >> k >> v)
        if (k == key) return v;
    return -1;
}

std::vector<std::string> subtree_dirs(const std::string& cgroup) {
    std::vector<std::string> out{cgroup};
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(cgroup, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (it->is_directory(ec) && !it->is_symlink(ec)) out.push_back(it->path().string());
    }
    return out;
}

bool wait_until(Clock::time_point deadline, const auto& done) {
    while (!done()) {
        if (Clock::now() >= deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
}

// One round of the fallback: freeze so nothing forks between the read of
// cgroup.procs and the kill, kill what is there, thaw so the killed exit.
void freeze_and_kill_once(const std::string& cgroup, Clock::time_point deadline) {
    bool frozen = write_control(cgroup + "/cgroup.freeze", "1");
    if (frozen) wait_until(std::min(deadline, Clock::now() + std::chrono::milliseconds(500)), [&] {
        return keyed_value(cgroup + "/cgroup.events", "frozen") == 1;
    });
    for (pid_t p : subtree_pids(cgroup)) ::kill(p, SIGKILL);
    if (frozen) write_control(cgroup + "/cgroup.freeze", "0");
}

}  // namespace

std::vector<pid_t> subtree_pids(const std::string& cgroup) {
    std::vector<pid_t> out;
    for (auto& d : subtree_dirs(cgroup)) {
        std::ifstream in(d + "/cgroup.procs");
        pid_t p;
        while (in >> p) out.push_back(p);
    }
    return out;
}

bool subtree_empty(const std::string& cgroup) {
    long populated = keyed_value(cgroup + "/cgroup.events", "populated");
    if (populated < 0) return !fs::exists(cgroup);  // gone, or a kernel without cgroup.events
    return populated == 0;
}

bool kill_subtree(const std::string& cgroup, std::chrono::milliseconds timeout, bool use_cgroup_kill) {
    auto deadline = Clock::now() + timeout;
    if (use_cgroup_kill && write_control(cgroup + "/cgroup.kill", "1")) {
        // The kernel kills the subtree atomically, new forks included.
        if (wait_until(deadline, [&] { return subtree_empty(cgroup); })) return true;
    }
    while (!subtree_empty(cgroup)) {
        if (Clock::now() >= deadline) return false;
        freeze_and_kill_once(cgroup, deadline);
        wait_until(std::min(deadline, Clock::now() + std::chrono::milliseconds(50)),
                   [&] { return subtree_empty(cgroup); });
    }
    return true;
}

std::vector<std::string> abandoned_run_sandboxes(const std::string& mount) {
    std::vector<std::string> out;
    std::error_code ec;
    for (auto& e : fs::directory_iterator(mount, ec)) {
        std::string name = e.path().filename();
        if (name.rfind("redir-run-", 0) != 0 || !e.is_directory(ec)) continue;
        std::string pid = name.substr(10);
        if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) continue;
        // A live run of that pid owns it (a reused pid of another program does not).
        std::ifstream comm("/proc/" + pid + "/comm");
        std::string c;
        if (comm && std::getline(comm, c) && c == "redirctl") continue;
        if (subtree_empty(e.path())) out.push_back(e.path());
    }
    return out;
}

bool remove_subtree(const std::string& cgroup) {
    auto dirs = subtree_dirs(cgroup);
    bool ok = true;
    for (auto it = dirs.rbegin(); it != dirs.rend(); ++it)
        if (::rmdir(it->c_str()) != 0 && errno != ENOENT) ok = false;
    return ok;
}

}  // namespace redir::ctl
