#pragma once
// A network namespace held by a descriptor: anonymous (gone with its last
// process and descriptor) or named under /run/netns (gone when released).
#include <cstdint>
#include <string>
#include <utility>

#include "common/fd.hpp"

namespace redir::netns {

class Namespace {
public:
    // A new namespace, never entered by the caller: it lives while this
    // object's descriptor or a process inside keeps it.
    static Namespace create_anonymous();
    // A new namespace bind-mounted at /run/netns/NAME (as `ip netns add`
    // does), unmounted and unlinked by the destructor.
    static Namespace create_named(const std::string& name);
    // An existing one: /proc/PID/ns/net, /run/netns/NAME, /proc/PID/fd/N.
    static Namespace open(const std::string& path);
    // The namespace of the calling thread.
    static Namespace current();

    Namespace(Namespace&& o) noexcept : fd_(std::move(o.fd_)), mount_(std::exchange(o.mount_, {})) {}
    Namespace& operator=(Namespace&&) = delete;
    ~Namespace();

    int fd() const { return fd_.get(); }
    // A path another process (the agent) can open while this object lives.
    std::string path() const;
    // The kernel's unique id of the namespace (never reused while booted).
    uint64_t cookie() const;

private:
    Namespace(UniqueFd fd, std::string mount) : fd_(std::move(fd)), mount_(std::move(mount)) {}
    UniqueFd fd_;
    std::string mount_;  // /run/netns/NAME when named
};

// The calling thread inside NS until destruction, then back where it was.
// Only this thread moves; sockets opened meanwhile stay in NS for good.
class Inside {
public:
    explicit Inside(const Namespace& ns);
    ~Inside();
    Inside(const Inside&) = delete;
    Inside& operator=(const Inside&) = delete;

private:
    Namespace home_;
};

}  // namespace redir::netns
