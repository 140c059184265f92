// redirctl's side of the control API: one connection, typed requests out, typed answers back.
#include "client.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iostream>

#include "common/atomic_file.hpp"

namespace redir::ctl {

void Client::connect() {
    fd_ = redir::UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    if (path_.size() >= sizeof(sa.sun_path)) throw Failure{"socket path " + path_ + " is too long"};
    std::strcpy(sa.sun_path, path_.c_str());
    if (::connect(fd_.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0)
        throw Failure{"cannot reach redird at " + path_ + ": " + std::strerror(errno) +
                      "; is the agent running? (start it with `redird`, or pass --socket / REDIR_SOCKET)"};
}

void Client::send(const std::string& line) {
    std::string l = line + "\n";
    const char* p = l.data();
    size_t left = l.size();
    while (left) {
        ssize_t n = ::send(fd_.get(), p, left, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            // The agent may have answered (a refusal) and closed before reading: read_line gets it.
            if (errno == EPIPE || errno == ECONNRESET) return;
            throw Failure{"lost the connection to redird at " + path_ + ": " + std::strerror(errno)};
        }
        p += n;
        left -= static_cast<size_t>(n);
    }
}

std::optional<std::string> Client::read_line() {
    for (;;) {
        auto nl = buf_.find('\n');
        if (nl != std::string::npos) {
            std::string line = buf_.substr(0, nl);
            buf_.erase(0, nl + 1);
            return line;
        }
        char tmp[65536];
        ssize_t n = ::read(fd_.get(), tmp, sizeof(tmp));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return std::nullopt;
        buf_.append(tmp, static_cast<size_t>(n));
    }
}

std::string Client::call_line(const std::string& req) {
    buf_.clear();
    connect();
    send(req);
    auto line = read_line();
    if (!line) throw Failure{"redird at " + path_ + " closed the connection without answering"};
    return *line;
}

int report_error(const control::ErrorReply& e) {
    if (e.errors && !e.errors->empty()) {
        for (auto& m : *e.errors) std::cerr << m << "\n";
    } else {
        std::cerr << "redirctl: " << (e.error.empty() ? "request failed" : e.error) << "\n";
    }
    return 1;
}

std::string read_policy_file(const std::string& path) {
    try {
        return redir::read_file(path);
    } catch (const std::exception& e) {
        throw Failure{std::string(e.what()) + "; check the path and permissions"};
    }
}

control::AttachRequest attach_request(const std::string& cgroup, const std::string& policy_arg) {
    control::AttachRequest req;
    req.cgroup = cgroup;
    if (policy_arg.empty()) {
        // Nothing but inference.local: the safest default for an agent.
        req.policy_text = R"({"version": 1, "name": "redirctl-run-default", "inference": {"enabled": true}})";
        req.source_name = "(built-in run policy)";
    } else if (std::filesystem::is_regular_file(policy_arg)) {
        req.policy_text = read_policy_file(policy_arg);
        req.source_name = policy_arg;
    } else if (policy_arg.find('/') != std::string::npos || policy_arg.ends_with(".json")) {
        throw Failure{"policy file " + policy_arg + " does not exist"};
    } else {
        req.policy_name = policy_arg;
    }
    return req;
}

}  // namespace redir::ctl
