#pragma once
// Per-sandbox inference limits (policy "inference.limits"): requests per
// minute and tokens per day over sliding windows, the retry-after a refused
// request is told, and the counters as JSON so they survive a restart. The
// time is always passed in (unix milliseconds), so every rule is table-tested.
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace redir::terminator {

struct InferenceLimits {
    uint64_t requests_per_minute = 0;  // 0: no limit
    uint64_t tokens_per_day = 0;       // 0: no limit
    bool operator==(const InferenceLimits&) const = default;
};

// A sum over a sliding window, kept in buckets: an amount counts from the
// moment it is added until its bucket's end is a whole window old (so up to
// one bucket longer than the window: a limit is never undercounted).
class SlidingSum {
public:
    SlidingSum(int64_t bucket_ms, int64_t window_ms) : bucket_ms_(bucket_ms), window_ms_(window_ms) {}

    void add(int64_t now_ms, uint64_t amount);
    uint64_t total(int64_t now_ms) const;
    // Milliseconds from NOW until the total is below LIMIT (0: it already is).
    int64_t ms_until_below(int64_t now_ms, uint64_t limit) const;
    // Forgets buckets that no longer count; true when nothing is left.
    bool prune(int64_t now_ms);

    // Bucket start (ms) → amount, for persistence.
    const std::map<int64_t, uint64_t>& buckets() const { return buckets_; }
    void restore(int64_t bucket_start_ms, uint64_t amount) { buckets_[bucket_start_ms] += amount; }

private:
    bool counts(int64_t bucket_start_ms, int64_t now_ms) const { return bucket_start_ms + bucket_ms_ + window_ms_ > now_ms; }

    int64_t bucket_ms_, window_ms_;
    std::map<int64_t, uint64_t> buckets_;
};

// Why a request was refused: which limit, and when to come back.
struct LimitExceeded {
    std::string limit;  // "requests_per_minute" or "tokens_per_day"
    uint64_t cap = 0;
    uint64_t used = 0;
    uint64_t retry_after_s = 1;  // whole seconds until a request would be admitted, at least 1
    std::string message() const;
    // retry-after; and x-should-retry: false when the wait is longer than
    // the official SDKs wait (they retry sooner, into the same refusal).
    std::vector<std::pair<std::string, std::string>> headers() const;
};

// The longest retry-after the OpenAI and Anthropic SDKs honour (they fall
// back to their own short backoff at 60 s and beyond).
inline constexpr uint64_t kSdkMaxRetryAfterS = 59;

// The counters of every sandbox (attached cgroup id). Thread-safe: the
// gateway's threads admit and charge, the agent's thread saves.
class InferenceLimiter {
public:
    static constexpr int64_t kMinuteMs = 60'000;
    static constexpr int64_t kDayMs = 86'400'000;
    static constexpr int64_t kRequestBucketMs = 1'000;  // retry-after to the second
    static constexpr int64_t kTokenBucketMs = 60'000;   // a day in 1440 buckets

    // Admits SANDBOX's request under LIMITS at NOW and counts it, or tells why
    // not (a refused request is not counted: retrying must not extend the wait).
    std::optional<LimitExceeded> admit(uint64_t sandbox, const InferenceLimits& limits, int64_t now_ms);
    // Tokens a finished request of SANDBOX used (counted with or without a limit,
    // so a limit set later sees the day's use).
    void charge_tokens(uint64_t sandbox, uint64_t tokens, int64_t now_ms);

    uint64_t requests_in_window(uint64_t sandbox, int64_t now_ms) const;
    uint64_t tokens_in_window(uint64_t sandbox, int64_t now_ms) const;

    // The counters as one JSON document (what still counts at NOW), and back.
    // load throws redir::Error on a malformed document.
    std::string to_json(int64_t now_ms);
    void load_json(std::string_view json);
    // Whether anything changed since the last to_json.
    bool dirty() const;

private:
    struct Counters {
        SlidingSum requests{kRequestBucketMs, kMinuteMs};
        SlidingSum tokens{kTokenBucketMs, kDayMs};
    };
    Counters& of(uint64_t sandbox) { return sandboxes_[sandbox]; }

    mutable std::mutex mu_;
    std::map<uint64_t, Counters> sandboxes_;
    bool dirty_ = false;
};

// Tokens a finished request used: what the provider reported (input plus
// output), or, when it reported nothing for an answered request (a stream cut
// before its usage), an estimate of 1 token per 4 bytes each way.
uint64_t tokens_to_charge(uint64_t reported_input, uint64_t reported_output, bool reported, uint64_t bytes_in,
                          uint64_t bytes_out);

}  // namespace redir::terminator
