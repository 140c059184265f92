#pragma once
// The names behind live DNS admissions, kept beside the pinned maps so a
// restarted agent can re-decide every admission under its new policy ids
// (the kernel entry holds the address, port set and expiry, not the name).
#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>

#include "common/fd.hpp"

namespace redir::agent {

class AdmissionJournal {
public:
    using Addr = std::array<uint8_t, 16>;
    using Key = std::pair<uint64_t, Addr>;  // attached cgroup id, address
    using Names = std::map<Key, std::string>;

    // Appends to PATH (created 0600). An empty path keeps nothing.
    explicit AdmissionJournal(std::string path);

    // Every (cgroup, address) -> name recorded so far; later lines win.
    Names load() const;
    // One line, one write(2): a kill -9 right after it loses nothing. A
    // failed write (full filesystem) only costs that admission its name, so
    // a restart withdraws it; it is counted.
    void append(uint64_t cgroup_id, const Addr& addr, std::string_view name);
    // Replaces the journal with LIVE (atomically), dropping dead lines.
    void rewrite(const Names& live);

    size_t lines() const { return lines_; }
    uint64_t write_errors() const { return write_errors_; }

private:
    std::string path_;
    UniqueFd fd_;
    size_t lines_ = 0;
    std::atomic<uint64_t> write_errors_{0};
};

}  // namespace redir::agent
