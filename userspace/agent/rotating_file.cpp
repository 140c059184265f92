// The audit log's file: O_APPEND writes, size tracked, rotation by rename chain.
#include "agent/rotating_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <system_error>

#include "common/error.hpp"

namespace redir::agent {

std::string rotated_name(const std::string& path, std::size_t index) {
    if (index == 0) return path;
    // spdlog's split_by_extension: no extension when there is no dot, the dot
    // is first or last, or it belongs to a directory or starts a hidden name.
    std::size_t dot = path.rfind('.');
    const std::size_t slash = path.find_last_of('/');
    const bool has_ext = dot != std::string::npos && dot != 0 && dot != path.size() - 1 &&
                         (slash == std::string::npos || slash < dot - 1);
    if (!has_ext) dot = path.size();
    return path.substr(0, dot) + "." + std::to_string(index) + path.substr(dot);
}

RotatingFile::RotatingFile(std::string path, std::size_t max_bytes, std::size_t keep_files)
    : path_(std::move(path)), max_bytes_(max_bytes), keep_files_(keep_files) {
    if (max_bytes_ == 0) throw Error("audit log " + path_ + ": the maximum file size must be above 0");
    const auto dir = std::filesystem::path(path_).parent_path();
    std::error_code ec;
    if (!dir.empty()) std::filesystem::create_directories(dir, ec);  // open() below names the failure
    if (!reopen(false)) throw sys_error("opening the audit log " + path_ + " for appending");
}

bool RotatingFile::reopen(bool truncate) noexcept {
    // 0666 as fopen(3) (spdlog) created it: the agent's umask decides.
    const int flags = O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (truncate ? O_TRUNC : 0);
    fd_.reset(::open(path_.c_str(), flags, 0666));
    if (!fd_) return false;
    struct stat st {};
    size_ = ::fstat(fd_.get(), &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : 0;
    torn_ = false;
    return true;
}

// audit.log -> audit.1.log -> ... -> audit.K.log (dropped), then a new audit.log.
// A rename that fails does not stop the chain: the next one replaces its
// target, so what is lost is older records, never the newest. The live file is
// opened with O_TRUNC either way, so it stays bounded even then (as spdlog).
bool RotatingFile::rotate() noexcept {
    fd_.reset();
    bool ok = true;
    try {  // the names allocate: once per rotation, not per record
        for (std::size_t i = keep_files_; i > 0; --i) {
            const std::string src = rotated_name(path_, i - 1);
            if (::access(src.c_str(), F_OK) != 0) continue;
            if (::rename(src.c_str(), rotated_name(path_, i).c_str()) != 0) ok = false;
        }
    } catch (...) {
        ok = false;
    }
    return reopen(true) && ok;
}

std::size_t RotatingFile::append(std::string_view records, std::span<const std::size_t> ends) noexcept {
    const std::size_t n = ends.size();
    std::size_t lost = 0;
    std::size_t i = 0, start = 0;  // the first record not yet dealt with, and its offset
    while (i < n) {
        if (!fd_ && !reopen(false)) return lost + (n - i);
        // Rotate only a file with something in it (spdlog: a record larger
        // than the limit is written whole to a fresh file rather than rotate
        // forever).
        bool rotated_ok = true;
        if (size_ > 0 && size_ + (torn_ ? 1 : 0) + (ends[i] - start) > max_bytes_) {
            rotated_ok = rotate();
            if (!fd_) return lost + (n - i);
        }
        const std::size_t lead = torn_ ? 1 : 0;
        // Records i..j-1 fit in this file: one writev for all of them.
        std::size_t j = i + 1;
        while (j < n && size_ + lead + (ends[j] - start) <= max_bytes_) ++j;
        const std::size_t end = ends[j - 1];
        iovec iov[2];
        int k = 0;
        if (lead) iov[k++] = {const_cast<char*>("\n"), 1};
        iov[k++] = {const_cast<char*>(records.data() + start), end - start};
        // One system call per batch: its records reach the page cache before
        // the agent can be killed (no fsync: a crash of the machine may lose
        // the last ones). O_APPEND on a regular file: Linux positions and
        // copies each write under the inode lock, so concurrent appenders
        // (another redird during a restart) never interleave inside it; our
        // own writers are serialised by the caller anyway, since rotation
        // needs it.
        ssize_t w;
        do w = ::writev(fd_.get(), iov, k);
        while (w < 0 && errno == EINTR);
        ++writes_;
        if (w <= 0) {  // nothing written (ENOSPC, EIO): the file is as it was
            lost += j - i;
            i = j;
            start = end;
            continue;
        }
        size_ += static_cast<std::uint64_t>(w);
        // The records that reached the file whole; a short write (the disk
        // filled mid-batch) may have cut the next one, and the others are
        // tried again.
        const std::size_t reached = start + (static_cast<std::size_t>(w) > lead ? static_cast<std::size_t>(w) - lead : 0);
        const std::size_t first = i;
        while (i < j && ends[i] <= reached) start = ends[i++];
        // A failed rotation (a rename) costs its record, as it always did.
        if (!rotated_ok && i > first) ++lost;
        if (reached > start) {
            // The file now ends inside record i: the next one starts on a new line.
            torn_ = true;
            ++lost;
            start = ends[i++];
        } else {
            torn_ = false;  // whole records only (or only the leading newline)
        }
    }
    return lost;
}

}  // namespace redir::agent
