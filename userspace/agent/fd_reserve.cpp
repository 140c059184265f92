// Spare descriptors for the control socket, and the RLIMIT_NOFILE raise.
#include "agent/fd_reserve.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

namespace redir::agent {

FdReserve& FdReserve::instance() {
    static FdReserve r;
    return r;
}

void FdReserve::init(size_t n) {
    {
        std::lock_guard lk(mu_);
        want_ = n;
    }
    refill();
}

void FdReserve::release() {
    std::lock_guard lk(mu_);
    for (int fd : fds_) ::close(fd);
    fds_.clear();
}

bool FdReserve::refill() {
    std::lock_guard lk(mu_);
    while (fds_.size() < want_) {
        int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd < 0) return false;
        fds_.push_back(fd);
    }
    return true;
}

bool FdReserve::full() const {
    std::lock_guard lk(mu_);
    return fds_.size() >= want_;
}

size_t FdReserve::held() const {
    std::lock_guard lk(mu_);
    return fds_.size();
}

size_t FdReserve::size() const {
    std::lock_guard lk(mu_);
    return want_;
}

NofileLimit raise_nofile_limit(rlim_t want) {
    rlimit rl{};
    ::getrlimit(RLIMIT_NOFILE, &rl);
    rlim_t target = want == 0 ? rl.rlim_max : want;
    if (target > rl.rlim_max) target = rl.rlim_max;  // the hard limit is the host's choice
    if (target != rl.rlim_cur) {
        rlimit nl = rl;
        nl.rlim_cur = target;
        if (::setrlimit(RLIMIT_NOFILE, &nl) == 0) rl = nl;
    }
    return {rl.rlim_cur, rl.rlim_max};
}

size_t count_open_fds() {
    size_t n = 0;
    if (DIR* d = ::opendir("/proc/self/fd")) {
        while (auto* e = ::readdir(d))
            if (e->d_name[0] != '.') ++n;
        ::closedir(d);
        if (n) --n;  // the directory stream itself
    }
    return n;
}

}  // namespace redir::agent
