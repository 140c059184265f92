#pragma once
// redirctl's side of the control API: one connection, typed requests out,
// typed answers back (control/protocol.hpp), JSON lines each way.
#include <optional>
#include <string>

#include "common/fd.hpp"
#include "control/protocol.hpp"

namespace redir::ctl {

// An error redirctl prints as "redirctl: MESSAGE" and exits 1 on.
struct Failure {
    std::string message;
};

// The agent refused a request; its error is already printed. Exit code 1.
struct Refused {};

// Prints the agent's error(s) to stderr and returns the exit code (1).
int report_error(const control::ErrorReply& e);

class Client {
public:
    explicit Client(std::string path) : path_(std::move(path)) {}

    void connect();
    void send(const std::string& line);
    // Next line from the agent; empty optional at end of stream.
    std::optional<std::string> read_line();
    // One request, one answer line, on a fresh connection.
    std::string call_line(const std::string& req);

    // One request, one typed answer, on a fresh connection.
    template <class Req>
    control::Answer<typename Req::Reply> call(const Req& req) {
        return decode<typename Req::Reply>(call_line(control::encode_request(req)));
    }
    // The reply to REQ; prints the agent's error and throws Refused when it has one.
    template <class Req>
    typename Req::Reply expect(const Req& req) {
        auto a = call(req);
        if (!a) {
            report_error(a.error);
            throw Refused{};
        }
        return std::move(*a.reply);
    }
    // LINE as an answer of type Reply; Failure when it is not one.
    template <class Reply>
    static control::Answer<Reply> decode(const std::string& line) {
        try {
            return control::decode_answer<Reply>(line);
        } catch (const control::ProtocolError& e) {
            throw Failure{std::string("redird sent a malformed answer: ") + e.what()};
        }
    }
    const std::string& path() const { return path_; }

private:
    std::string path_;
    redir::UniqueFd fd_;
    std::string buf_;
};

// The content of policy file PATH; Failure naming it when unreadable.
std::string read_policy_file(const std::string& path);

// The attach request for CGROUP: POLICY_ARG is a policy FILE when one exists
// at that path, else the name of a loaded policy; empty means the built-in
// policy that allows nothing but inference.local.
control::AttachRequest attach_request(const std::string& cgroup, const std::string& policy_arg);

}  // namespace redir::ctl
