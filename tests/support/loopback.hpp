#pragma once
// What the loopback tests of the terminator, the gateway and the inspect relay
// share: the names they spell alike, a scratch directory, the io_context under
// test on its own thread, and polling with a deadline (never a bare sleep).
// A test says `using namespace redir::test;` and has them all.
#include <stdlib.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

// Declared, not included: a test that uses Beast includes the headers it needs.
namespace boost::beast::http {}

namespace redir::test {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

inline const asio::ip::address kLoopback = asio::ip::make_address("127.0.0.1");

// A fresh directory under /tmp, removed with its contents at the end.
class ScratchDir {
public:
    explicit ScratchDir(const std::string& prefix) {
        std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
        if (!::mkdtemp(tmpl.data())) throw std::runtime_error("cannot create a scratch directory " + tmpl);
        path_ = tmpl;
    }
    ~ScratchDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    ScratchDir(const ScratchDir&) = delete;
    ScratchDir& operator=(const ScratchDir&) = delete;
    const std::string& path() const { return path_; }

private:
    std::string path_;
};

// The io_context the code under test runs on, run by one thread of its own.
class IoThread : public boost::asio::io_context {
public:
    IoThread() = default;
    explicit IoThread(int concurrency_hint) : boost::asio::io_context(concurrency_hint) {}
    ~IoThread() { join(); }
    void start(int threads = 1) {
        for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { run(); });
    }
    // Stops the context and waits for its threads.
    void join() {
        stop();
        for (auto& t : threads_)
            if (t.joinable()) t.join();
        threads_.clear();
    }

private:
    std::vector<std::thread> threads_;
};

// Polls COND until it holds or D has passed.
inline bool wait_for(const std::function<bool()>& cond, std::chrono::milliseconds d = std::chrono::seconds(3)) {
    const auto deadline = std::chrono::steady_clock::now() + d;
    while (!cond()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
}

// Whether the peer closed S (EOF or reset) within D.
inline bool closed_within(boost::asio::ip::tcp::socket& s, std::chrono::milliseconds d) {
    s.non_blocking(true);
    const auto deadline = std::chrono::steady_clock::now() + d;
    char b[256];
    while (std::chrono::steady_clock::now() < deadline) {
        boost::system::error_code ec;
        s.read_some(boost::asio::buffer(b), ec);
        if (ec && ec != boost::asio::error::would_block) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
}

}  // namespace redir::test
