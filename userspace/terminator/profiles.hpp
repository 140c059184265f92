#pragma once
// What each provider type speaks and how it authenticates, kept as data so a
// new provider type is a table row, not new code paths.
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace redir::terminator {

// The endpoints the terminator serves. Each proxied one belongs to exactly one
// API family; a provider type lists the endpoints it accepts.
enum class Endpoint {
    ChatCompletions,  // POST /v1/chat/completions  (OpenAI)
    Completions,      // POST /v1/completions       (OpenAI)
    Embeddings,       // POST /v1/embeddings        (OpenAI)
    Responses,        // POST /v1/responses         (OpenAI)
    Messages,         // POST /v1/messages          (Anthropic)
    Models,           // GET  /v1/models            (answered locally)
    ModelById,        // GET  /v1/models/{id}       (answered locally)
};

// "OpenAI Chat Completions API", for error messages.
std::string_view endpoint_description(Endpoint e);
std::string_view endpoint_path(Endpoint e);

enum class AuthStyle { None, Bearer, Header };

struct Profile {
    std::string_view type;
    // Empty: the user must give one (openai-compatible).
    std::string_view default_base_url;
    // True when the base URL already ends at the API version root
    // (".../v1", like OPENAI_BASE_URL), so the client's leading "/v1" is
    // dropped when joining; false when the base is the bare origin
    // (ANTHROPIC_BASE_URL style).
    bool base_includes_version = true;
    AuthStyle auth = AuthStyle::Bearer;
    std::string_view auth_header;  // for AuthStyle::Header, lower case
    // Credential map keys tried in order; with none of them present a sole
    // credential is used whatever its key.
    std::vector<std::string_view> credential_keys;
    bool credential_required = true;
    // Sent when the client did not send an allowed header of that name.
    std::vector<std::pair<std::string_view, std::string_view>> default_headers;
    // Request headers passed through in addition to the common allowlist.
    std::vector<std::string_view> extra_headers;
    // Query parameters passed through; every other one is dropped (some APIs
    // take keys in the query string).
    std::vector<std::string_view> query_params;
    std::vector<Endpoint> endpoints;
    // Answers locally instead of forwarding (the mock provider).
    bool local = false;

    bool serves(Endpoint e) const;
};

// nullptr for an unknown type.
const Profile* find_profile(std::string_view type);
// "openai, anthropic, nvidia, openai-compatible, mock"
std::string profile_type_list();

// Headers every profile passes through (lower case).
const std::vector<std::string_view>& common_allowed_headers();

// Header names that carry credentials: never passed through, and a profile's
// extras may not name them.
bool is_credential_header(std::string_view lower_name);

}  // namespace redir::terminator
