#include "netns.hpp"

#include <net/if.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "common/netns_cookie.hpp"
#include "loader/cgroup.hpp"

namespace redir::testsupport {

void enter_private_netns(const std::vector<std::string>& lo_addrs) {
    if (::unshare(CLONE_NEWNET) != 0) throw std::runtime_error("unshare(CLONE_NEWNET) failed (run as root)");
    nl_sock* sk = nl_socket_alloc();
    if (!sk || nl_connect(sk, NETLINK_ROUTE) != 0) throw std::runtime_error("cannot open rtnetlink");
    rtnl_link* lo = nullptr;
    if (rtnl_link_get_kernel(sk, 0, "lo", &lo) != 0) throw std::runtime_error("no lo in the new namespace");
    rtnl_link* change = rtnl_link_alloc();
    rtnl_link_set_flags(change, IFF_UP);
    int err = rtnl_link_change(sk, lo, change, 0);
    rtnl_link_put(change);
    int ifindex = rtnl_link_get_ifindex(lo);
    rtnl_link_put(lo);
    if (err != 0) throw std::runtime_error(std::string("cannot bring lo up: ") + nl_geterror(err));
    for (auto& a : lo_addrs) {
        nl_addr* local = nullptr;
        if (nl_addr_parse(a.c_str(), AF_UNSPEC, &local) != 0) throw std::runtime_error("bad address " + a);
        rtnl_addr* ra = rtnl_addr_alloc();
        rtnl_addr_set_ifindex(ra, ifindex);
        rtnl_addr_set_local(ra, local);
        rtnl_addr_set_flags(ra, IFA_F_NODAD);  // usable at once, no duplicate detection wait
        err = rtnl_addr_add(sk, ra, 0);
        rtnl_addr_put(ra);
        nl_addr_put(local);
        if (err != 0) throw std::runtime_error("cannot add " + a + " to lo: " + nl_geterror(err));
    }
    nl_socket_free(sk);
}

uint64_t current_netns_cookie() { return redir::current_netns_cookie(); }

TempCgroup::TempCgroup(const std::string& tag, const std::string& parent) {
    static std::atomic<int> seq{0};
    std::string base = parent;
    if (base.empty()) {
        auto mnt = loader::find_cgroup2_mount();
        if (!mnt) throw std::runtime_error("no cgroup2 mount");
        base = *mnt;
    }
    path_ = base + "/redir-test-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(seq++);
    std::filesystem::create_directory(path_);
}

TempCgroup::~TempCgroup() {
    // rmdir fails while processes remain; children are reaped before this runs.
    for (int i = 0; i < 50 && ::rmdir(path_.c_str()) != 0 && errno == EBUSY; i++) ::usleep(20000);
}

void TempCgroup::add(int pid) const {
    std::ofstream f(path_ + "/cgroup.procs");
    f << pid << std::endl;
    if (!f) throw std::runtime_error("cannot move pid into " + path_);
}

int run_in_cgroup(const std::string& cgroup, const std::function<int()>& fn) {
    pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
        if (!cgroup.empty()) {
            std::ofstream f(cgroup + "/cgroup.procs");
            f << ::getpid() << std::endl;
            if (!f) ::_exit(254);
        }
        int rc = 255;
        try {
            rc = fn();
        } catch (...) {
        }
        ::_exit(rc);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 255;
}

}  // namespace redir::testsupport
