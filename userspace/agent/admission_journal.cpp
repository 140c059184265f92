// Append-only name journal for DNS admissions, compacted by rewrite().
#include "agent/admission_journal.hpp"

#include <fcntl.h>

#include <fstream>
#include <sstream>
#include <spdlog/spdlog.h>

#include "common/atomic_file.hpp"

namespace redir::agent {
namespace {

std::string hex(const AdmissionJournal::Addr& a) {
    static const char* d = "0123456789abcdef";
    std::string s;
    for (auto b : a) {
        s += d[b >> 4];
        s += d[b & 15];
    }
    return s;
}

bool unhex(const std::string& s, AdmissionJournal::Addr& a) {
    if (s.size() != 32) return false;
    auto nib = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        return -1;
    };
    for (size_t i = 0; i < 16; ++i) {
        int h = nib(s[2 * i]), l = nib(s[2 * i + 1]);
        if (h < 0 || l < 0) return false;
        a[i] = static_cast<uint8_t>(h << 4 | l);
    }
    return true;
}

std::string line_for(uint64_t cg, const AdmissionJournal::Addr& addr, std::string_view name) {
    std::string l = std::to_string(cg) + " " + hex(addr) + " ";
    l += name;
    l += '\n';
    return l;
}

}  // namespace

AdmissionJournal::AdmissionJournal(std::string path) : path_(std::move(path)) {
    if (path_.empty()) return;
    fd_.reset(::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600));
    if (!fd_) spdlog::warn("cannot open DNS admission journal {}; a restart will withdraw DNS admissions", path_);
}

AdmissionJournal::Names AdmissionJournal::load() const {
    Names out;
    if (path_.empty()) return out;
    std::ifstream in(path_);
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream ss(line);
        std::string cg, addr, name;
        ss >> cg >> addr >> name;
        Addr a{};
        if (cg.empty() || name.empty() || !unhex(addr, a)) continue;  // a torn last line
        try {
            out[{std::stoull(cg), a}] = name;
        } catch (...) {
        }
    }
    return out;
}

void AdmissionJournal::append(uint64_t cgroup_id, const Addr& addr, std::string_view name) {
    if (!fd_) return;
    std::string l = line_for(cgroup_id, addr, name);
    if (::write(fd_.get(), l.data(), l.size()) != static_cast<ssize_t>(l.size())) {
        ++write_errors_;
        return;
    }
    ++lines_;
}

void AdmissionJournal::rewrite(const Names& live) {
    if (path_.empty()) return;
    std::string data;
    for (auto& [k, name] : live) data += line_for(k.first, k.second, name);
    try {
        write_file_atomic(path_, data);
    } catch (const std::exception& e) {
        ++write_errors_;
        spdlog::warn("cannot compact DNS admission journal: {}", e.what());
        return;
    }
    fd_.reset(::open(path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC));
    lines_ = live.size();
}

}  // namespace redir::agent
