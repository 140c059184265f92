#pragma once
// The typed error of the control protocol: why a request line was refused
// before any command ran (code, the field at fault, one sentence).
#include <string>
#include <string_view>

#include "common/error.hpp"

namespace redir::control {

enum class ErrorCode {
    malformed_json,   // not a JSON object, or not JSON at all
    too_large,        // the line is longer than the server reads
    too_deep,         // nested deeper than any request needs
    unknown_command,  // "cmd" names no command of the table
    missing_field,    // a required field is absent
    wrong_type,       // a field has another JSON type than the command takes
    invalid_value,    // right type, refused content (a NUL byte in a string)
};

// The wire name of CODE ("missing_field", ...).
std::string_view code_name(ErrorCode code);

class ProtocolError : public Error {
public:
    ProtocolError(ErrorCode code, std::string field, const std::string& message)
        : Error(message), code(code), field(std::move(field)) {}
    ErrorCode code;
    std::string field;  // dotted path of the field at fault ("credentials.KEY"); empty when none
};

}  // namespace redir::control
