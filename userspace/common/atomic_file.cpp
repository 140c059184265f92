// Temp-file + fsync + rename writes, so readers never see a torn file.
#include "atomic_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "error.hpp"
#include "fd.hpp"

namespace redir {

void write_file_atomic(const std::string& path, std::string_view data, mode_t mode) {
    std::filesystem::path p(path);
    std::string dir = p.has_parent_path() ? p.parent_path().string() : ".";
    std::string tmpl = dir + "/." + p.filename().string() + ".XXXXXX";
    UniqueFd fd(::mkstemp(tmpl.data()));
    if (!fd) throw sys_error("cannot create temporary file in " + dir);
    if (::fchmod(fd.get(), mode) != 0) {
        ::unlink(tmpl.c_str());
        throw sys_error("cannot set mode on " + tmpl);
    }
    const char* p_data = data.data();
    size_t left = data.size();
    while (left > 0) {
        ssize_t n = ::write(fd.get(), p_data, left);
        if (n < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            ::unlink(tmpl.c_str());
            throw sys_error("cannot write " + tmpl, e);
        }
        p_data += n;
        left -= static_cast<size_t>(n);
    }
    if (::fsync(fd.get()) != 0) {
        int e = errno;
        ::unlink(tmpl.c_str());
        throw sys_error("cannot fsync " + tmpl, e);
    }
    fd.reset();
    if (::rename(tmpl.c_str(), path.c_str()) != 0) {
        int e = errno;
        ::unlink(tmpl.c_str());
        throw sys_error("cannot rename " + tmpl + " to " + path, e);
    }
    fsync_dir(dir);
}

void fsync_dir(const std::string& dir) {
    UniqueFd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (dfd) ::fsync(dfd.get());
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw sys_error("cannot read " + path);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void make_dirs(const std::string& path, mode_t mode) {
    std::error_code ec;
    std::filesystem::path p(path);
    std::filesystem::path cur;
    for (const auto& part : p) {
        cur /= part;
        if (cur.empty() || std::filesystem::exists(cur, ec)) continue;
        if (::mkdir(cur.c_str(), mode) != 0 && errno != EEXIST)
            throw sys_error("cannot create directory " + cur.string());
    }
}

}  // namespace redir
