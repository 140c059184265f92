#pragma once
// The `mock` provider: answers locally in the shape of the API the client
// called, so sandboxes and tests can exercise inference without a provider.
#include <string>
#include <vector>

#include "terminator/profiles.hpp"

namespace redir::terminator {

struct MockReply {
    int status = 200;
    std::string content_type;
    bool stream = false;
    // Non-streamed: one piece, the body. Streamed: one SSE event per piece.
    std::vector<std::string> pieces;
};

// BODY is the request after the model rewrite (a JSON object).
MockReply mock_reply(Endpoint ep, const std::string& body, const std::string& model, bool stream);

// The text every mock completion answers with.
std::string mock_text(const std::string& model);

}  // namespace redir::terminator
