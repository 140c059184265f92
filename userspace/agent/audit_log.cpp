#include "agent/audit_log.hpp"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/spdlog.h>

namespace redir::agent {

AuditLog::AuditLog(const std::string& path, size_t tail) : max_tail_(tail) {
    auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, false);
    logger_ = std::make_shared<spdlog::logger>("audit", sink);
    logger_->set_pattern("%v");
    // Audit records must reach the disk even if the agent is killed next.
    logger_->flush_on(spdlog::level::trace);
}

AuditLog::~AuditLog() = default;

void AuditLog::write(const std::string& line) {
    logger_->info(line);
    std::vector<Subscriber> subs;
    {
        std::lock_guard lk(mu_);
        written_++;
        tail_.push_back(line);
        if (tail_.size() > max_tail_) tail_.pop_front();
        subs.swap(subs_);
    }
    std::vector<Subscriber> keep;
    for (auto& s : subs)
        if (s(line)) keep.push_back(std::move(s));
    std::lock_guard lk(mu_);
    for (auto& s : keep) subs_.push_back(std::move(s));
}

std::vector<std::string> AuditLog::tail(size_t n) const {
    std::lock_guard lk(mu_);
    size_t start = tail_.size() > n ? tail_.size() - n : 0;
    return {tail_.begin() + static_cast<long>(start), tail_.end()};
}

void AuditLog::subscribe(Subscriber s) {
    std::lock_guard lk(mu_);
    subs_.push_back(std::move(s));
}

}  // namespace redir::agent
