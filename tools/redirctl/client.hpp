#pragma once
// redirctl's side of the control API: one connection, JSON lines each way.
#include <optional>
#include <string>

#include <rapidjson/document.h>

#include "common/fd.hpp"

namespace redir::ctl {

// An error redirctl prints as "redirctl: MESSAGE" and exits 1 on.
struct Failure {
    std::string message;
};

class Client {
public:
    explicit Client(std::string path) : path_(std::move(path)) {}

    void connect();
    void send(const std::string& line);
    // Next line from the agent; empty optional at end of stream.
    std::optional<std::string> read_line();
    // One request, one answer, on a fresh connection.
    rapidjson::Document call(const std::string& req);
    const std::string& path() const { return path_; }

private:
    std::string path_;
    redir::UniqueFd fd_;
    std::string buf_;
};

std::string json_escape(const std::string& s);
// Prints the agent's error(s) to stderr and returns the exit code (1).
int report_error(const rapidjson::Document& d);

}  // namespace redir::ctl
