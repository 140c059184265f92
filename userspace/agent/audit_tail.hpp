#pragma once
// The last audit records in memory, for `redirctl events`: a ring of strings
// bounded by record count and bytes. A record is assigned into the slot of
// the one it replaces, so the slot's buffer is reused: in the steady state a
// record costs a memcpy, not an allocation (a deque of strings cost one
// allocation a record, and a block every 16).
#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace redir::agent {

class AuditTail {
public:
    AuditTail(std::size_t max_records, std::size_t max_bytes)
        : max_records_(max_records),
          max_bytes_(max_bytes),
          // Vacated slots keep a buffer only up to this size: idle capacity then
          // stays within max(max_bytes, max_records x 1 KiB), so one huge record
          // does not pin its size once per slot.
          keep_capacity_(std::max<std::size_t>(1024, max_records ? max_bytes / max_records : 0)) {}

    // Appends LINE, then drops the oldest records past either bound (the
    // newest is kept even when it alone is over max_bytes).
    void push(std::string_view line) {
        if (max_records_ == 0) return;
        if (count_ == max_records_) {
            // Full (the steady state): the oldest slot becomes the newest and
            // is written over in place: no clear, no second pass over it.
            std::string& s = slots_[head_];
            bytes_ -= s.size();
            if (s.capacity() > keep_capacity_) std::string().swap(s);
            s.assign(line.data(), line.size());
            head_ = next(head_);
        } else {
            slot_for_newest().assign(line.data(), line.size());
            ++count_;
        }
        bytes_ += line.size();
        while (bytes_ > max_bytes_ && count_ > 1) drop_oldest();
    }

    // The last N records (fewer when fewer are kept), oldest first.
    std::vector<std::string> last(std::size_t n) const {
        const std::size_t k = std::min(n, count_);
        std::vector<std::string> out;
        out.reserve(k);
        for (std::size_t i = count_ - k; i < count_; ++i) out.push_back(at(i));
        return out;
    }

    std::size_t size() const { return count_; }
    std::size_t bytes() const { return bytes_; }

private:
    // Index arithmetic without a division: both operands are below size.
    std::size_t wrap(std::size_t i) const { return i >= slots_.size() ? i - slots_.size() : i; }
    std::size_t next(std::size_t i) const { return wrap(i + 1); }
    // I-th oldest record.
    const std::string& at(std::size_t i) const { return slots_[wrap(head_ + i)]; }

    void drop_oldest() {
        std::string& s = slots_[head_];
        bytes_ -= s.size();
        if (s.capacity() > keep_capacity_)
            std::string().swap(s);
        else
            s.clear();
        head_ = next(head_);
        --count_;
    }

    // The slot after the newest record: a vacated one, or a new slot while
    // the ring is still growing towards max_records.
    std::string& slot_for_newest() {
        if (count_ < slots_.size()) return slots_[wrap(head_ + count_)];
        if (head_ == 0) return slots_.emplace_back();
        // Every slot is live and the oldest is not at index 0 (records were
        // dropped by the byte bound before the ring reached max_records): the
        // new slot goes in front of the oldest. Rare, and only while growing.
        slots_.emplace(slots_.begin() + static_cast<std::ptrdiff_t>(head_));
        return slots_[head_++];
    }

    std::size_t max_records_;
    std::size_t max_bytes_;
    std::size_t keep_capacity_;
    std::vector<std::string> slots_;
    std::size_t head_ = 0;  // index of the oldest record
    std::size_t count_ = 0;
    std::size_t bytes_ = 0;
};

}  // namespace redir::agent
