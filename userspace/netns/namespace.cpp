// A network namespace held by a descriptor: anonymous or named under /run/netns.
#include "namespace.hpp"

#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.hpp"

namespace redir::netns {
namespace {

constexpr const char* kRunDir = "/run/netns";

// /run/netns a shared mount, so names made here show in every mount
// namespace that already exists (what `ip netns add` does too).
void share_run_dir() {
    if (::mkdir(kRunDir, 0755) != 0 && errno != EEXIST) throw sys_error(std::string("cannot create ") + kRunDir);
    if (::mount("", kRunDir, "none", MS_SHARED | MS_REC, nullptr) == 0) return;
    if (errno != EINVAL) throw sys_error(std::string("cannot make ") + kRunDir + " a shared mount");
    // Not a mount point yet: bind it onto itself, then share it.
    if (::mount(kRunDir, kRunDir, "none", MS_BIND | MS_REC, nullptr) != 0 ||
        ::mount("", kRunDir, "none", MS_SHARED | MS_REC, nullptr) != 0)
        throw sys_error(std::string("cannot make ") + kRunDir + " a shared mount point");
}

}  // namespace

Namespace Namespace::current() {
    UniqueFd fd(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
    if (!fd) throw sys_error("cannot open this thread's network namespace (/proc/thread-self/ns/net)");
    return Namespace(std::move(fd), "");
}

Namespace Namespace::open(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) throw sys_error("cannot open network namespace " + path);
    return Namespace(std::move(fd), "");
}

Namespace Namespace::create_anonymous() {
    Namespace home = current();
    if (::unshare(CLONE_NEWNET) != 0) throw sys_error("cannot create a network namespace (needs CAP_SYS_ADMIN)");
    UniqueFd fd(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
    int open_err = errno;
    if (::setns(home.fd(), CLONE_NEWNET) != 0)
        throw sys_error("cannot return to the original network namespace after creating one");
    if (!fd) throw sys_error("cannot open the new network namespace", open_err);
    return Namespace(std::move(fd), "");
}

Namespace Namespace::create_named(const std::string& name) {
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
        throw Error("network namespace name '" + name + "' is not a plain file name; choose one without '/'");
    share_run_dir();
    std::string path = std::string(kRunDir) + "/" + name;
    UniqueFd mark(::open(path.c_str(), O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0));
    if (!mark) throw sys_error("cannot create " + path + " (a namespace of that name may exist: pick another name)");
    mark.reset();
    Namespace anon = create_anonymous();
    std::string src = "/proc/self/fd/" + std::to_string(anon.fd());
    if (::mount(src.c_str(), path.c_str(), "none", MS_BIND, nullptr) != 0) {
        int e = errno;
        ::unlink(path.c_str());
        throw sys_error("cannot bind the new network namespace to " + path, e);
    }
    return Namespace(std::move(anon.fd_), path);
}

Namespace::~Namespace() {
    if (mount_.empty()) return;
    ::umount2(mount_.c_str(), MNT_DETACH);
    ::unlink(mount_.c_str());
}

std::string Namespace::path() const {
    if (!mount_.empty()) return mount_;
    return "/proc/" + std::to_string(::getpid()) + "/fd/" + std::to_string(fd_.get());
}

uint64_t Namespace::cookie() const {
    Inside in(*this);
    UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    uint64_t c = 0;
    socklen_t len = sizeof(c);
    if (!s || ::getsockopt(s.get(), SOL_SOCKET, 71 /* SO_NETNS_COOKIE, 5.14+ */, &c, &len) != 0)
        throw sys_error("cannot read the network namespace cookie (SO_NETNS_COOKIE needs Linux 5.14)");
    return c;
}

Inside::Inside(const Namespace& ns) : home_(Namespace::current()) {
    if (::setns(ns.fd(), CLONE_NEWNET) != 0) throw sys_error("cannot enter network namespace " + ns.path());
}

Inside::~Inside() {
    // Failing to return would leave this thread in the sandbox's namespace:
    // nothing later could trust where its sockets are.
    if (::setns(home_.fd(), CLONE_NEWNET) != 0) std::abort();
}

}  // namespace redir::netns
