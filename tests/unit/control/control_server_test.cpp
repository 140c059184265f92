// The agent's control socket under a hostile client: huge, deep, NUL-laden
// and endless lines get a typed error line and the agent keeps serving; a
// handler's failure comes back as escaped JSON; `events --follow` against a
// log being written gets its reply first, then every later record once.
#include "agent/control_server.hpp"

#include <gtest/gtest.h>
#include <rapidjson/document.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <functional>
#include <thread>

#include "agent/audit_log.hpp"
#include "common/fd.hpp"
#include "control/dispatcher.hpp"

namespace redir::control {
namespace {

class ControlServerTest : public ::testing::Test {
protected:
    void SetUp() override {
        // The server serves root peers only (SO_PEERCRED).
        if (::geteuid() != 0) GTEST_SKIP() << "needs root: the control socket answers only uid 0";
        char t[] = "/tmp/redir-control-XXXXXX";
        dir_ = ::mkdtemp(t);
        commands_.on<DetachRequest>([](const DetachRequest& r) { return DetachReply{r.cgroup}; });
        commands_.on<StatusRequest>([](const StatusRequest&) -> StatusReply {
            throw Error("state file \"x\"\nis broken \xff");
        });
        audit_ = std::make_unique<agent::AuditLog>(dir_ + "/audit.log");
        commands_.on<EventsRequest>([this](const EventsRequest& r, const Dispatcher::Conn& c) {
            auto reply = agent::serve_events(*audit_, r, c);
            if (after_events_) after_events_();  // the handler still running, its reply not yet sent
            return reply;
        });
        server_ = std::make_unique<agent::ControlServer>(
            io_, dir_ + "/redird.sock",
            [this](const std::string& line, const std::shared_ptr<agent::ControlConn>& c) {
                return commands_.dispatch(line, c);
            },
            [this](pid_t) -> std::optional<std::string> {
                if (refuse_peers_) return std::string("requests from inside a sandbox are refused");
                return std::nullopt;
            });
        thread_ = std::thread([this] { io_.run(); });
    }
    void TearDown() override {
        if (thread_.joinable()) {
            boost::asio::post(io_, [this] { server_.reset(); });
            work_.reset();
            io_.stop();
            thread_.join();
        }
        if (!dir_.empty()) std::filesystem::remove_all(dir_);
    }

    UniqueFd connect() {
        UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        sockaddr_un sa{};
        sa.sun_family = AF_UNIX;
        std::strcpy(sa.sun_path, (dir_ + "/redird.sock").c_str());
        EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0) << std::strerror(errno);
        timeval tv{20, 0};
        ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        return fd;
    }
    static void send_all(int fd, const std::string& s) {
        for (size_t off = 0; off < s.size();) {
            ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
            if (n <= 0) return;  // the server may close first
            off += static_cast<size_t>(n);
        }
    }
    // The next line from the server, "" at end of stream or timeout.
    std::string read_line(int fd) {
        for (;;) {
            if (auto nl = buf_.find('\n'); nl != std::string::npos) {
                std::string l = buf_.substr(0, nl);
                buf_.erase(0, nl + 1);
                return l;
            }
            char tmp[4096];
            ssize_t n = ::read(fd, tmp, sizeof(tmp));
            if (n <= 0) return "";
            buf_.append(tmp, static_cast<size_t>(n));
        }
    }
    static rapidjson::Document parsed(const std::string& line) {
        rapidjson::Document d;
        d.Parse<rapidjson::kParseValidateEncodingFlag>(line.c_str());
        EXPECT_FALSE(d.HasParseError()) << line;
        EXPECT_TRUE(d.IsObject()) << line;
        return d;
    }
    static std::string code_of(const std::string& line) {
        auto d = parsed(line);
        return d.IsObject() && d.HasMember("code") ? d["code"].GetString() : "";
    }

    boost::asio::io_context io_;
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_{io_.get_executor()};
    std::string dir_;
    Dispatcher commands_;
    std::unique_ptr<agent::AuditLog> audit_;  // outlives the server's connections
    std::function<void()> after_events_;
    std::atomic<bool> refuse_peers_{false};  // the PeerCheck's verdict (a sandbox attached meanwhile)
    std::unique_ptr<agent::ControlServer> server_;
    std::thread thread_;
    std::string buf_;
};

TEST_F(ControlServerTest, HostileLinesGetTypedErrorsAndTheConnectionServesOn) {
    auto fd = connect();
    send_all(fd.get(), std::string(10 << 20, 'x') + "\n");
    EXPECT_EQ(code_of(read_line(fd.get())), "malformed_json");
    std::string deep = "{\"cmd\":\"detach\",\"cgroup\":" + std::string(1000000, '[') + "\n";
    send_all(fd.get(), deep);
    EXPECT_EQ(code_of(read_line(fd.get())), "too_deep");
    send_all(fd.get(), std::string("{\"cmd\":\"detach\",\"cgroup\":\"/a\0b\"}\n", 33));
    EXPECT_EQ(code_of(read_line(fd.get())), "malformed_json");
    send_all(fd.get(), "{\"cmd\":\"detach\",\"cgroup\":\"/a\\u0000b\"}\n");
    EXPECT_EQ(code_of(read_line(fd.get())), "invalid_value");
    send_all(fd.get(), "{\"cmd\":\"policy.nuke\"}\n");
    EXPECT_EQ(code_of(read_line(fd.get())), "unknown_command");
    // Still serving, on the same connection.
    send_all(fd.get(), "{\"cmd\":\"detach\",\"cgroup\":\"/sys/fs/cgroup/s\"}\n");
    EXPECT_EQ(read_line(fd.get()), R"({"ok":true,"cgroup":"/sys/fs/cgroup/s"})");
}

TEST_F(ControlServerTest, ALineOverTheBoundIsRefusedAndTheConnectionEnds) {
    auto fd = connect();
    // The bound is the server's read buffer: it never holds more than kMaxLine.
    send_all(fd.get(), std::string(kMaxLine + (1 << 20), 'a'));
    auto line = read_line(fd.get());
    EXPECT_EQ(code_of(line), "too_large");
    EXPECT_EQ(read_line(fd.get()), "");  // closed
    // Other clients are still served.
    auto again = connect();
    send_all(again.get(), "{\"cmd\":\"detach\",\"cgroup\":\"/c\"}\n");
    EXPECT_EQ(read_line(again.get()), R"({"ok":true,"cgroup":"/c"})");
}

// A connection opened before its process's cgroup was attached: the next
// request is refused in words, then the connection ends (the refusal line
// must not be lost to the connection being marked dead).
TEST_F(ControlServerTest, ARequestFromAPeerNowInsideASandboxIsRefusedInWords) {
    auto fd = connect();
    send_all(fd.get(), "{\"cmd\":\"detach\",\"cgroup\":\"/a\"}\n");
    EXPECT_EQ(read_line(fd.get()), R"({"ok":true,"cgroup":"/a"})");
    refuse_peers_ = true;
    send_all(fd.get(), "{\"cmd\":\"detach\",\"cgroup\":\"/a\"}\n");
    auto line = read_line(fd.get());
    ASSERT_FALSE(line.empty()) << "the connection ended without the refusal";
    auto d = parsed(line);
    ASSERT_TRUE(d.IsObject());
    EXPECT_FALSE(d["ok"].GetBool());
    EXPECT_NE(std::string(d["error"].GetString()).find("inside a sandbox are refused"), std::string::npos) << line;
}

TEST_F(ControlServerTest, AnInternalErrorIsEscaped) {
    auto fd = connect();
    send_all(fd.get(), "{\"cmd\":\"status\"}\n");
    auto line = read_line(fd.get());
    auto d = parsed(line);
    ASSERT_TRUE(d.IsObject());
    EXPECT_FALSE(d["ok"].GetBool());
    EXPECT_EQ(std::string(d["error"].GetString()), "internal error: state file \"x\"\nis broken \xef\xbf\xbd");
}

// A record another thread writes after the subscription but before the
// reply has gone out (a terminator thread, while the agent's thread encodes a
// long tail) is the first line after the reply, never ahead of it.
TEST_F(ControlServerTest, EventsFollowSendsTheReplyBeforeARecordWrittenMeanwhile) {
    audit_->write(R"({"n":1})");
    after_events_ = [this] { std::thread([this] { audit_->write(R"({"n":2})"); }).join(); };
    auto fd = connect();
    send_all(fd.get(), R"({"cmd":"events","count":10,"follow":true})" "\n");
    EXPECT_EQ(read_line(fd.get()), R"({"ok":true,"events":[{"n":1}]})");
    EXPECT_EQ(read_line(fd.get()), R"({"n":2})");
}

// `events --follow` while another thread writes records as fast as it can
// (the terminator under load): the first line is the reply, and its records
// then the live lines are consecutive — no record lost between the tail and
// the subscription, none twice, none out of order.
TEST_F(ControlServerTest, EventsFollowGetsTheReplyThenEveryLaterRecordOnce) {
    std::jthread writer([&](std::stop_token stop) {  // stopped and joined however the test ends
        for (uint64_t i = 0; !stop.stop_requested(); ++i)
            audit_->write(R"({"n":)" + std::to_string(i) + "}");
    });
    auto n_of = [](const rapidjson::Value& v) -> int64_t {
        return v.IsObject() && v.HasMember("n") && v["n"].IsInt64() ? v["n"].GetInt64() : -1;
    };
    for (int round = 0; round < 200 && !HasFatalFailure(); ++round) {
        auto fd = connect();
        buf_.clear();
        send_all(fd.get(), std::string(R"({"cmd":"events","count":)") + std::to_string(round % 3 == 0 ? 1 : 5000) +
                               R"(,"follow":true})" + "\n");
        const std::string first = read_line(fd.get());
        auto reply = parsed(first);
        ASSERT_TRUE(reply.IsObject() && reply.HasMember("events") && reply["events"].IsArray())
            << "round " << round << ": the first line is not the reply: " << first.substr(0, 200);
        std::vector<int64_t> seq;
        for (auto& e : reply["events"].GetArray()) seq.push_back(n_of(e));
        for (int k = 0; k < 300; ++k) {
            const std::string l = read_line(fd.get());
            ASSERT_FALSE(l.empty()) << "round " << round << ": the stream ended";
            seq.push_back(n_of(parsed(l)));
        }
        for (std::size_t i = 1; i < seq.size(); ++i)
            ASSERT_EQ(seq[i], seq[i - 1] + 1) << "round " << round << ": record " << i << " of tail + live";
    }
}

}  // namespace
}  // namespace redir::control
