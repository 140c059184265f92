// redirctl's side of the control API: one connection, JSON lines each way.
#include "client.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>

#include "common/json_out.hpp"

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

rapidjson::Document Client::call(const std::string& req) {
    buf_.clear();
    connect();
    send(req);
    auto line = read_line();
    if (!line) throw Failure{"redird at " + path_ + " closed the connection without answering"};
    rapidjson::Document d;
    d.Parse(line->c_str());
    if (d.HasParseError() || !d.IsObject()) throw Failure{"redird sent a malformed answer"};
    return d;
}

std::string json_escape(const std::string& s) { return json_quote(s); }

int report_error(const rapidjson::Document& d) {
    if (d.HasMember("errors") && d["errors"].IsArray() && d["errors"].Size() > 0) {
        for (auto& e : d["errors"].GetArray()) std::cerr << e.GetString() << "\n";
    } else {
        std::cerr << "redirctl: "
                  << (d.HasMember("error") && d["error"].IsString() ? d["error"].GetString() : "request failed") << "\n";
    }
    return 1;
}

}  // namespace redir::ctl
