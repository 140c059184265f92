#pragma once
// The HTTP-independent half of the terminator: routing, the JSON body rewrite,
// header allowlists, error bodies, usage accounting and the access-log line.
// Kept apart from Beast so it is cheap to compile and to test.
#include <cstdint>
#include <map>
#include <optional>
#include <memory_resource>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/conn_info.hpp"
#include "terminator/limits.hpp"
#include "terminator/profiles.hpp"
#include "terminator/store.hpp"
#include "terminator/usage.hpp"

namespace redir::terminator {

using HeaderList = std::vector<std::pair<std::string, std::string>>;  // names lower case

// A HeaderList a connection reuses from one request to the next: filled in
// place (its strings keep their buffers, so a usual request allocates
// nothing), exactly the given headers each time.
class ReusedHeaders {
public:
    // Replaces the list with the NAME/VALUE pairs of FIELDS whose lower-cased
    // name KEEP accepts, names lower-cased.
    template <class Range, class Keep>
    const HeaderList& fill(const Range& fields, const Keep& keep) {
        // bytes_ is what release_if_large compares: the entries' capacities,
        // summed as they are filled. Unknown (the most) until the fill ends,
        // so a fill cut short by an exception is released, never kept.
        bytes_ = kUnknownBytes;
        std::size_t n = 0, bytes = 0;
        for (const auto& f : fields)
            if (keep(lowered(f.name_string()))) bytes += put(n++, f.value());
        list_.resize(n);
        bytes_ = bytes;
        return list_;
    }
    template <class Range>
    const HeaderList& fill(const Range& fields) {
        return fill(fields, [](std::string_view) { return true; });
    }
    // After a request: what a hostile header set made it hold goes back (a
    // connection keeps at most kKeepEntries short headers between requests).
    void release_if_large();
    const HeaderList& list() const { return list_; }

    static constexpr std::size_t kKeepEntries = 32;
    static constexpr std::size_t kKeepBytes = 4096;

private:
    static constexpr std::size_t kUnknownBytes = static_cast<std::size_t>(-1);
    std::string_view lowered(std::string_view name);      // into name_, ASCII lower case
    std::size_t put(std::size_t i, std::string_view value);  // name_ and VALUE as entry I; its capacity
    HeaderList list_;
    std::string name_;       // the name being looked at
    std::size_t bytes_ = 0;  // the capacities of list_'s entries' strings, summed
};

// Error bodies follow the API the client is speaking.
enum class ApiShape { OpenAI, Anthropic };

// Origin-form or absolute-form request target → path without query, with
// repeated and trailing slashes folded. nullopt when it is neither form.
struct Target {
    std::string path;
    std::string query;  // without '?'
};
std::optional<Target> normalise_target(std::string_view target);

// Which endpoint PATH is; nullopt for anything else. MODEL_ID receives {id}
// for /v1/models/{id} (percent-decoded).
std::optional<Endpoint> match_route(const std::string& path, std::string* model_id);

// Anthropic shape for /v1/messages, and for any path when the client sent an
// anthropic-version header (the Anthropic SDKs always do).
ApiShape shape_for(const std::string& path, bool anthropic_client);

// {"error":{"message","type","param","code"}} or
// {"type":"error","error":{"type","message"}}.
std::string error_json(ApiShape shape, std::string_view type, std::string_view message);
// Error type name matching an HTTP status in the given API's vocabulary.
std::string_view error_type_for_status(ApiShape shape, int status);

struct RewriteResult {
    bool ok = false;
    std::string body;             // the client's request with model set (and stream_options, when forced)
    std::string error;            // one sentence for the 400 when !ok (client text clipped)
    std::string model_requested;  // "" when absent or not a string; clipped to LOG_MAX
    bool stream = false;          // top-level "stream": true
    bool truncated = false;       // model_requested or error had client text clipped
};
// Sets the top-level "model" to MODEL (inserted when absent). Everything else
// is the client's bytes as they came (numbers, strings with their escapes,
// order, whitespace), from the object's '{' to its '}': only the edits are
// written. The body must be one JSON object as rapidjson's Reader takes it
// (strings UTF-8, no repeated top-level key); a refusal's sentence is the one
// that Reader's error gives. The body is written once, straight into
// RESULT.body (no second copy), and client strings quoted in RESULT
// (model_requested, error) are clip()ped to LOG_MAX.
// FORCE_USAGE (asks_stream_usage()): a streamed request gets
// stream_options.include_usage true, whatever the client sent.
// SCAN (provider_fetch.hpp), when given, is fed the events of the body that
// leaves (strings decoded), in the same pass: what a parse of RESULT.body
// would feed it.
// Its finding counts only when the result is ok (a malformed body is refused
// as such first, as when the scan was a second parse).
class FetchScanner;
RewriteResult rewrite_model(std::string_view body, std::string_view model, std::size_t log_max = kLogStringMax,
                            bool force_usage = false, FetchScanner* scan = nullptr);

// A request header block checked as bytes before any parser sees it: bare LF
// line endings and obs-fold continuation lines both let two parsers disagree
// about where a header (or the header block) ends.
enum class HeaderLint { Incomplete, Complete, BareLf, ObsFold };
// HEADER_END receives the size of the block (through the blank line) when Complete.
HeaderLint lint_header(std::string_view bytes, std::size_t& header_end);

// The parts of a parsed request header that decide how it is routed.
struct RequestHead {
    std::string_view method;  // as sent (methods are case-sensitive)
    std::string_view target;
    unsigned version = 11;    // 10 or 11
    std::size_t transfer_encoding_count = 0;
    std::string_view transfer_encoding;  // the first Transfer-Encoding value
    std::size_t host_count = 0;
    bool has_expect = false;
    std::string_view expect;
    bool anthropic_client = false;  // an anthropic-version header was sent
};

// What the header alone decides. A framing refusal is answered at once and
// closes the connection (the body is never read: request smuggling); a route
// refusal is answered after the body was read, on a kept-alive connection.
struct RouteDecision {
    int framing_status = 0;  // 400 / 417, or 0
    int route_status = 0;    // 400 / 404 / 405, or 0
    std::string message;     // for whichever refusal; client text clipped
    HeaderList headers;      // extra response headers (allow)
    ApiShape shape = ApiShape::OpenAI;
    std::string path;        // normalised path, or the raw target when it is neither form
    std::string query;
    std::optional<Endpoint> endpoint;
    std::string model_id;    // {id} of /v1/models/{id}
    bool expect_continue = false;
};
RouteDecision decide_route(const RequestHead& head, std::size_t log_max = kLogStringMax);

// What the configuration decides for a request whose route was accepted: a
// refusal (503 nothing configured or unknown type, 400 endpoint the provider
// does not speak, 404 another model's id), or the provider's profile.
struct ServiceDecision {
    int status = 0;                   // 0 = served by PROFILE
    std::string message;              // for the refusal; client text clipped
    const Profile* profile = nullptr;
    bool truncated = false;           // the message had client text clipped
};
ServiceDecision decide_service(const RouteDecision& route, const Snapshot& snap, std::size_t log_max = kLogStringMax);

// Why a request body cannot be held in memory now (the 503 of the body budget).
std::string body_budget_message(bool this_sandbox, std::uint64_t cap);

// How a provider's response is relayed to the sandbox: its framing, and where
// its usage is read from.
struct ResponsePlan {
    bool no_body = false;       // 1xx, 204, 304
    bool chunked = false;       // re-framed chunked (no usable Content-Length)
    std::optional<std::uint64_t> content_length;
    bool sse = false;           // text/event-stream: relayed piece by piece, usage scanned per event
    bool encoded = false;       // a Content-Encoding other than identity: usage unreadable
    bool json_body = false;     // usage read from a bounded copy of the body
};
ResponsePlan plan_response(int status, std::string_view content_type, std::string_view content_encoding,
                           std::optional<std::uint64_t> content_length, bool upstream_chunked);

// The 401 the sandbox gets when the provider refused the configured credential
// (never the provider's body: it quotes part of the key).
std::string credential_rejected_message(const Provider& provider);
// The SSE event that ends a stream the provider broke off, in the API's words.
std::string stream_error_event(ApiShape shape, std::string_view why);

// The request headers that go to the provider: allowlisted client headers,
// the provider's credential, its default headers. Client credentials and
// hop-by-hop headers never pass.
HeaderList upstream_headers(const HeaderList& client, const Profile& profile, const Provider& provider);
// Whether a client header (lower-case NAME) can matter to the provider call:
// a name each_upstream_header may pass, "connection" (it names others) or
// "anthropic-beta" (find_provider_fetch). The others need not be kept.
bool client_header_matters(std::string_view name, const Profile& profile);
// The headers the provider adds to every request, in the order they go out:
// its credential as PROFILE sends it, then its account headers. Constant
// between configuration changes: the Store keeps them in each Snapshot.
HeaderList provider_headers(const Profile& profile, const Provider& provider);
// upstream_headers without building a list: EMIT(name, value) for each, in the
// same order, with the provider's part taken from PROVIDER_HEADERS (above).
using HeaderSink = void (*)(void* ctx, std::string_view name, std::string_view value);
void each_upstream_header(const HeaderList& client, const Profile& profile, const HeaderList& provider_headers,
                          HeaderSink emit, void* ctx);
template <class F>
void each_upstream_header(const HeaderList& client, const Profile& profile, const HeaderList& provider_headers,
                          F&& emit) {
    using Fn = std::remove_reference_t<F>;
    each_upstream_header(
        client, profile, provider_headers,
        [](void* c, std::string_view n, std::string_view v) { (*static_cast<Fn*>(c))(n, v); },
        const_cast<void*>(static_cast<const void*>(&emit)));
}
// The credential the profile sends, if any.
std::optional<std::string> pick_credential(const Profile& profile, const Provider& provider);
// What the audit record says of the credential a provider call carries: the
// header and the provider's key name, never the value. Empty header: none.
struct CredentialUse {
    std::string header;
    std::string key;
};
CredentialUse credential_use(const Profile& profile, const Provider& provider);

// Whether a provider response header is relayed to the sandbox.
// CONNECTION_TOKENS: names listed in the response's Connection header.
using TokenSet = std::set<std::string, std::less<>>;
bool relay_response_header(std::string_view lower_name, const TokenSet& connection_tokens);
// Comma-separated tokens of all Connection header values, lower case.
TokenSet connection_tokens(const HeaderList& headers);
// S without HTTP optional whitespace (spaces, tabs) at either end.
std::string_view trim(std::string_view s);

// Target path on the provider for client PATH (already matched) and QUERY.
std::string upstream_target(const BaseUrl& base, const Profile& profile, const std::string& path,
                            const std::string& query);
// The same into OUT (replacing its contents): the gateway writes it into the
// request's arena, no string of its own a request.
void upstream_target(std::pmr::string& out, const BaseUrl& base, const Profile& profile, const std::string& path,
                     const std::string& query);

// GET /v1/models and /v1/models/{id} bodies.
std::string models_list_json(ApiShape shape, const InferenceConfig& cfg);
std::string model_json(ApiShape shape, const InferenceConfig& cfg);

// One line of the access log per request. Holds no credential and no prompt.
struct RequestLog {
    ConnInfo conn;  // who called (cgroup, pid, client address)
    std::string method;
    std::string path;
    std::string route;  // the sandbox's inference route
    std::string provider;
    std::string provider_type;
    std::string model_requested;
    std::string model_used;
    uint64_t config_version = 0;
    int status = 0;
    uint64_t bytes_in = 0;   // request body
    uint64_t bytes_out = 0;  // response body
    double duration_ms = 0;
    bool stream = false;
    Usage usage;
    std::string error;  // why it failed, when it did
    // Set once the request is answered: by the provider (with or without an
    // injected credential) or locally (mock).
    std::optional<CredentialUse> credential;
};
std::string request_log_json(const RequestLog& r);
// The same line written into OUT (cleared first, its room kept for the next).
void request_log_json(const RequestLog& r, std::string& out);
// The same line in this thread's reused buffer: valid until this thread's next
// call (the per-request path: no allocation once the buffer has grown).
std::string_view request_log_line(const RequestLog& r);

// Percent-decoding for a path segment; nullopt on a bad escape.
std::optional<std::string> percent_decode(std::string_view s);

}  // namespace redir::terminator
