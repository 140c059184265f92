#pragma once
// Per-sandbox fairness for the terminator and the inspect relay: counted
// quotas handed out as RAII tickets, a throttle for the audit records of
// refusals, and the length cap on client-supplied strings that reach a log.
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace redir::terminator {

// A resource counted per sandbox (cgroup id) and in total: connections, or
// bytes of request bodies in flight. 0 means no cap.
class Quota : public std::enable_shared_from_this<Quota> {
public:
    struct Caps {
        std::uint64_t per_sandbox = 0;
        std::uint64_t total = 0;
    };
    enum class Refusal { None, Sandbox, Total };

    // Holds AMOUNT of the quota until destroyed; keeps the quota alive, so a
    // ticket may outlive whoever handed it out.
    class Ticket {
    public:
        Ticket() = default;
        Ticket(Ticket&& o) noexcept { *this = std::move(o); }
        Ticket& operator=(Ticket&& o) noexcept;
        Ticket(const Ticket&) = delete;
        Ticket& operator=(const Ticket&) = delete;
        ~Ticket() { release(); }
        void release();
        explicit operator bool() const { return q_ != nullptr; }

    private:
        friend class Quota;
        Ticket(std::shared_ptr<Quota> q, std::uint64_t key, std::uint64_t amount)
            : q_(std::move(q)), key_(key), amount_(amount) {}
        std::shared_ptr<Quota> q_;
        std::uint64_t key_ = 0;
        std::uint64_t amount_ = 0;
    };

    static std::shared_ptr<Quota> make(Caps caps) { return std::shared_ptr<Quota>(new Quota(caps)); }

    // An empty ticket (and WHY set) when SANDBOX or the total would pass its cap.
    Ticket try_acquire(std::uint64_t sandbox, std::uint64_t amount, Refusal* why = nullptr);
    std::uint64_t in_use(std::uint64_t sandbox) const;
    std::uint64_t total_in_use() const;
    const Caps& caps() const { return caps_; }

private:
    explicit Quota(Caps c) : caps_(c) {}
    void give_back(std::uint64_t sandbox, std::uint64_t amount);

    const Caps caps_;
    mutable std::mutex mu_;
    std::unordered_map<std::uint64_t, std::uint64_t> used_;
    std::uint64_t total_ = 0;
};

// One audit record per sandbox per INTERVAL for a repeated refusal, carrying
// how many were not recorded since: a sandbox flooding a cap cannot flood
// the audit log with the refusals.
class RefusalThrottle {
public:
    using Clock = std::chrono::steady_clock;
    explicit RefusalThrottle(std::chrono::milliseconds interval = std::chrono::seconds(1)) : interval_(interval) {}
    // Whether to write a record now; SUPPRESSED gets the count left out before it.
    bool should_record(std::uint64_t sandbox, std::uint64_t& suppressed, Clock::time_point now = Clock::now());

private:
    struct Entry {
        Clock::time_point last{};
        std::uint64_t suppressed = 0;
    };
    std::chrono::milliseconds interval_;
    std::mutex mu_;
    std::unordered_map<std::uint64_t, Entry> seen_;
};

// Default cap on a client-supplied string quoted in a log line or an error.
constexpr std::size_t kLogStringMax = 256;

// S unchanged when it fits in MAX bytes; else its first bytes (cut at a UTF-8
// character boundary) followed by "…(truncated, N bytes)", N = S's size.
std::string clip(std::string_view s, std::size_t max = kLogStringMax);
// Whether clip(S, MAX) would cut S.
inline bool clipped(std::string_view s, std::size_t max = kLogStringMax) { return s.size() > max; }

}  // namespace redir::terminator
