#pragma once
// An append-only file rotated by size, for the audit log: one writev(2) per
// batch of records (the caller's buffer, split only where a rotation falls),
// no buffer of its own, no heap allocation between rotations. Replaces spdlog's rotating_file_sink for audit records, which
// formats every record through a 250-byte pattern buffer an audit line does
// not fit (two heap allocations a record) and copies it again into a FILE.
// Same file names as spdlog's scheme, so existing files and tools carry on:
// "audit.log" rotates to "audit.1.log", "audit.1.log" to "audit.2.log", ...
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "common/fd.hpp"

namespace redir::agent {

// "dir/audit.log", 2 -> "dir/audit.2.log"; without an extension ("dir/audit",
// "dir/.audit", "rc.d/audit") -> "dir/audit.2". Index 0 is PATH itself.
// spdlog's calc_filename, so rotated files keep the names they always had.
std::string rotated_name(const std::string& path, std::size_t index);

class RotatingFile {
public:
    // Opens PATH for appending (creating it and its directory). Throws
    // redir::Error naming the path when it cannot be opened, or when
    // MAX_BYTES is 0. KEEP_FILES rotated files are kept besides PATH.
    RotatingFile(std::string path, std::size_t max_bytes, std::size_t keep_files);

    // Appends RECORDS, whole lines each ended by its newline, ENDS[i] the
    // offset just past record i's newline (ENDS ascending, the last one
    // RECORDS.size()): one writev(2) on an O_APPEND descriptor for as many
    // records as fit in the live file, rotating first when the next record
    // would take it past max_bytes (a batch crossing the limit is split at
    // that record; a record larger than the limit is written whole to a
    // fresh file). Not thread-safe: the caller serialises. Returns how many
    // records did not reach the file whole (full disk, short write, failed
    // rotation or reopen): the caller counts them. Never throws.
    std::size_t append(std::string_view records, std::span<const std::size_t> ends) noexcept;

    std::uint64_t size() const { return size_; }
    // writev(2) calls made (tests: records are batched).
    std::uint64_t writes() const { return writes_; }

private:
    bool rotate() noexcept;
    bool reopen(bool truncate) noexcept;

    std::string path_;
    std::size_t max_bytes_;
    std::size_t keep_files_;
    UniqueFd fd_;
    std::uint64_t size_ = 0;  // bytes in the live file, as written by us since it was opened
    std::uint64_t writes_ = 0;
    // The last record stopped part-way (ENOSPC mid-line): the next one starts
    // on a new line, so a torn record never swallows a whole one.
    bool torn_ = false;
};

}  // namespace redir::agent
