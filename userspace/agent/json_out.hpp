#pragma once
// The agent's name for the common JSON builder (common/json_out.hpp), plus the
// helpers every control reply and audit record shares.
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/json_out.hpp"

namespace redir::agent {

// A distinct class rather than a using-declaration so that headers may keep
// forward-declaring `class JsonOut;` in this namespace.
class JsonOut : public redir::JsonOut {};

// Wall-clock milliseconds since the epoch: the "ts_ms" of every audit record.
inline uint64_t now_ms() {
    return static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count());
}

inline std::string error_response(std::string_view msg) {
    JsonOut j;
    j.begin().boolean("ok", false).str("error", msg).end();
    return j.take();
}

}  // namespace redir::agent
