#pragma once
// Audit records: one JSON object per line, to a file (spdlog) and to the
// in-memory tail that `redirctl events` reads and follows.
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace spdlog {
class logger;
}

namespace redir::agent {

class AuditLog {
public:
    explicit AuditLog(const std::string& path, size_t tail = 4096);
    ~AuditLog();

    void write(const std::string& json_line);
    std::vector<std::string> tail(size_t n) const;

    using Subscriber = std::function<bool(const std::string&)>;  // false: unsubscribe
    void subscribe(Subscriber s);

    uint64_t written() const { return written_; }

private:
    std::shared_ptr<spdlog::logger> logger_;
    mutable std::mutex mu_;
    std::deque<std::string> tail_;
    size_t max_tail_;
    std::vector<Subscriber> subs_;
    uint64_t written_ = 0;
};

}  // namespace redir::agent
