#pragma once
// Errors carry what failed and where, so a user reads one sentence and knows.
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace redir {

class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// "what: strerror(err)" for a failed system call.
inline Error sys_error(const std::string& what, int err = errno) {
    return Error(what + ": " + std::strerror(err));
}

}  // namespace redir
