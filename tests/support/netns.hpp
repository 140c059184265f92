#pragma once
// Test isolation: every kernel test runs in a network namespace it creates,
// with fake addresses on that namespace's lo. Nothing leaves it.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace redir::testsupport {

// unshare(CLONE_NEWNET), bring lo up, add each "addr/prefix" to lo (rtnetlink
// via libnl). Throws on failure.
void enter_private_netns(const std::vector<std::string>& lo_addrs);

// Cookie of the calling thread's network namespace (SO_NETNS_COOKIE).
uint64_t current_netns_cookie();

// A uniquely named cgroup v2 directory under the cgroup2 mount, removed
// (after its processes exit) by the destructor.
class TempCgroup {
public:
    explicit TempCgroup(const std::string& tag, const std::string& parent = "");
    ~TempCgroup();
    TempCgroup(const TempCgroup&) = delete;
    TempCgroup& operator=(const TempCgroup&) = delete;
    const std::string& path() const { return path_; }
    // Moves PID into this cgroup.
    void add(int pid) const;

private:
    std::string path_;
};

// Runs FN in a forked child placed in CGROUP (empty: stay where we are);
// returns FN's return value (0..255) or 255 if the child crashed.
int run_in_cgroup(const std::string& cgroup, const std::function<int()>& fn);

}  // namespace redir::testsupport
