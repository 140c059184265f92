#pragma once
// Requests that would make the provider reach the network for the sandbox
// (MCP servers and connectors, web search/fetch tools, image or file inputs
// given by URL), found before the request leaves, and the account headers a
// sandbox may not choose. Pure: no I/O, table-tested.
#include <optional>
#include <string>
#include <string_view>

#include "terminator/request.hpp"
#include "terminator/store.hpp"

namespace redir::terminator {

// The first place in a request that asks for a provider-side fetch.
struct FetchFinding {
    std::string where;  // "body tools[0].type" or "header anthropic-beta"; client text clipped
    std::string what;   // "an MCP server", "a web search tool", "an image input given by URL", ...
};

// Scans BODY (a JSON object as rewrite_model emitted it) at every depth, and
// the client's anthropic-beta headers. Keys and "type" values are compared
// case-insensitively with '-' read as '_', and every duplicate of a key is
// looked at (providers differ in which one they keep). data: URLs are not
// fetches. nullopt when the request asks for none.
std::optional<FetchFinding> find_provider_fetch(std::string_view body, const HeaderList& client_headers,
                                                std::size_t log_max = kLogStringMax);

// The 400 message: names the field and the policy switch that allows it.
std::string provider_fetch_refusal(const FetchFinding& f);

// Headers that choose which organisation or project of a multi-org key is
// billed: set only from the provider's configuration, never by the sandbox.
bool is_account_header(std::string_view lower_name);
// The provider's own values, from its credentials map: OPENAI_ORG_ID
// (or OPENAI_ORGANIZATION) → openai-organization, OPENAI_PROJECT_ID →
// openai-project. Appended to OUT; a client's copy must already be gone.
void add_account_headers(HeaderList& out, const Provider& provider);

}  // namespace redir::terminator
