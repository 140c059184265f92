#pragma once
// Policy files: JSON text -> validated, normalised Policy, or every problem
// found, each as `FILE:LINE:COL: JSON-PATH: message`.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "policy/model.hpp"

namespace redir::policy {

struct Diagnostic {
    std::string file;
    uint32_t line = 0;  // 1-based; 0 when the problem has no position (unreadable file)
    uint32_t col = 0;   // 1-based, in characters (UTF-8 code points)
    std::string path;   // JSON path, "$" for the document itself
    std::string message;

    // "FILE:LINE:COL: PATH: message", or "FILE: message" without a position.
    std::string to_string() const;
};

struct ParseResult {
    std::optional<Policy> policy;     // set iff errors is empty
    std::vector<Diagnostic> errors;   // all of them, in file order

    bool ok() const { return policy.has_value(); }
    // One diagnostic per line, for printing to stderr.
    std::string error_text() const;
};

ParseResult parse_policy(std::string_view text, std::string_view filename);

// Reads PATH and parses it; an unreadable file is one diagnostic naming PATH.
ParseResult validate_policy_file(const std::string& path);

// Canonical, pretty-printed JSON of a loaded policy (what `redirctl policy
// show` prints). parse_policy(to_json(p)) gives back p.
std::string to_json(const Policy& p);

}  // namespace redir::policy
