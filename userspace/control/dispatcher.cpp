// Decoding a request line and handing it to its command's slot.
#include "control/dispatcher.hpp"

#include "control/leak_mutant.hpp"

namespace redir::control {

std::string Dispatcher::dispatch(std::string_view line, const Conn& conn) const {
    leak_mutant_on_request();  // a no-op outside the soak's sanitized tree
    Request req;
    try {
        req = decode_request(line);
    } catch (const ProtocolError& e) {
        return encode_error(e);
    }
    auto& slot = slots_[req.index()];
    if (!slot)
        return encode_error(ErrorReply{"command \"" + std::string(command_names()[req.index()]) +
                                           "\" is not served by this agent",
                                       std::nullopt, std::string(code_name(ErrorCode::unknown_command)), "cmd"});
    return slot(req, conn);
}

std::vector<std::string_view> Dispatcher::unserved() const {
    std::vector<std::string_view> out;
    auto names = command_names();
    for (size_t i = 0; i < slots_.size(); i++)
        if (!slots_[i]) out.push_back(names[i]);
    return out;
}

}  // namespace redir::control
