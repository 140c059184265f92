#pragma once
// Finds the sandbox process behind a refused DNS query on a worker thread, so
// scanning /proc never stalls the io thread; the queue is bounded, so a
// refusal flood costs the agent a fixed amount (excess records go without a
// pid, counted).
#include <boost/asio/io_context.hpp>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include "agent/socket_owner.hpp"

namespace redir::agent {

struct OwnerQuery {
    bool tcp = false;
    redir_addr local{};  // the responder's address and port (the sandbox socket's remote end)
    uint16_t local_port = 0;
    redir_addr peer{};  // the sandbox socket's address and port
    uint16_t peer_port = 0;
    std::string cgroup_path;
};

class OwnerLookups {
public:
    using Done = std::function<void(std::optional<ProcessInfo>)>;

    OwnerLookups(boost::asio::io_context& io, size_t max_queued);
    ~OwnerLookups();  // drops what is queued; DONE is not called for it
    OwnerLookups(const OwnerLookups&) = delete;
    OwnerLookups& operator=(const OwnerLookups&) = delete;

    // DONE runs on the io thread with the owner. With the queue full it runs
    // at once with nullopt.
    void submit(OwnerQuery q, Done done);

    uint64_t skipped() const { return skipped_; }
    uint64_t done() const { return done_; }

private:
    void run();

    boost::asio::io_context& io_;
    const size_t max_queued_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::pair<OwnerQuery, Done>> queue_;
    bool stopping_ = false;
    std::atomic<uint64_t> skipped_{0}, done_{0};
    std::thread worker_;
};

}  // namespace redir::agent
