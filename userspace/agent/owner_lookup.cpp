// Bounded worker queue for socket-owner lookups (see owner_lookup.hpp).
#include "agent/owner_lookup.hpp"

#include <boost/asio/post.hpp>

namespace redir::agent {

OwnerLookups::OwnerLookups(boost::asio::io_context& io, size_t max_queued)
    : io_(io), max_queued_(max_queued), worker_([this] { run(); }) {}

OwnerLookups::~OwnerLookups() {
    {
        std::lock_guard lk(mu_);
        stopping_ = true;
        queue_.clear();
    }
    cv_.notify_all();
    worker_.join();
}

void OwnerLookups::submit(OwnerQuery q, Done done) {
    {
        std::lock_guard lk(mu_);
        if (!stopping_ && queue_.size() < max_queued_) {
            queue_.emplace_back(std::move(q), std::move(done));
            cv_.notify_one();
            return;
        }
    }
    ++skipped_;
    done(std::nullopt);
}

void OwnerLookups::run() {
    for (;;) {
        std::pair<OwnerQuery, Done> job;
        {
            std::unique_lock lk(mu_);
            cv_.wait(lk, [this] { return stopping_ || !queue_.empty(); });
            if (stopping_) return;
            job = std::move(queue_.front());
            queue_.pop_front();
        }
        const auto& q = job.first;
        auto owner = find_socket_owner(q.tcp, q.peer, q.peer_port, q.local, q.local_port, q.cgroup_path);
        ++done_;
        // Back to the io thread: audit writes and their followers live there.
        boost::asio::post(io_, [done = std::move(job.second), owner]() mutable { done(owner); });
    }
}

}  // namespace redir::agent
