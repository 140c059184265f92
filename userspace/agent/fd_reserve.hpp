#pragma once
// File descriptors kept for the operator. redird raises RLIMIT_NOFILE at
// start and holds a few spare descriptors; when a sandbox has made the agent
// use all the others, the control socket frees the spares to accept the
// operator's connection and serve its requests (state writes included), and
// the data plane's accept loops refuse new connections until the spares are
// back (`full()`), so they cannot take them.
#include <sys/resource.h>

#include <cstddef>
#include <mutex>
#include <vector>

namespace redir::agent {

class FdReserve {
public:
    static FdReserve& instance();

    void init(size_t n);  // opens N spare descriptors (of /dev/null)
    void release();       // closes them all, so the caller's next open succeeds
    bool refill();        // reopens them; false while descriptors are still short
    bool full() const;    // data-plane accept loops may accept
    size_t held() const;
    size_t size() const;

private:
    mutable std::mutex mu_;
    std::vector<int> fds_;
    size_t want_ = 0;
};

struct NofileLimit {
    rlim_t soft = 0;
    rlim_t hard = 0;
};
// Sets the soft RLIMIT_NOFILE to WANT (0: the hard limit), at most the hard
// limit. Returns the limits in force afterwards.
NofileLimit raise_nofile_limit(rlim_t want);
// Descriptors this process has open (entries of /proc/self/fd).
size_t count_open_fds();

}  // namespace redir::agent
