#pragma once
// Requests that would make the provider reach the network for the sandbox
// (MCP servers and connectors, web search/fetch tools, image or file inputs
// given by URL), found before the request leaves, and the account headers a
// sandbox may not choose. Pure: no I/O, table-tested.
#include <cstddef>
#include <cstdint>
#include <memory_resource>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "terminator/request.hpp"
#include "terminator/store.hpp"

namespace redir::terminator {

// The first place in a request that asks for a provider-side fetch.
struct FetchFinding {
    std::string where;  // "body tools[0].type" or "header anthropic-beta"; client text clipped
    std::string what;   // "an MCP server", "a web search tool", "an image input given by URL", ...
};

// Follows one JSON document event by event (rapidjson SAX handler
// signatures) and keeps the first place that asks for a provider-side fetch:
// at every depth, keys and "type" values compared case-insensitively with '-'
// read as '_', every duplicate of a key looked at (providers differ in which
// one they keep), data: URLs not counted. rewrite_model feeds it the events of
// the body it writes, so the rewrite and the scan are one parse; a Reader can
// drive it directly (find_provider_fetch). Every handler returns false once a
// finding was made, and ignores what follows.
class FetchScanner {
public:
    explicit FetchScanner(std::size_t log_max = kLogStringMax);

    bool Null() { return scalar(); }
    bool Bool(bool) { return scalar(); }
    bool Int(int) { return scalar(); }
    bool Uint(unsigned) { return scalar(); }
    bool Int64(std::int64_t) { return scalar(); }
    bool Uint64(std::uint64_t) { return scalar(); }
    bool Double(double) { return scalar(); }
    bool RawNumber(const char*, unsigned, bool) { return scalar(); }
    bool String(const char* s, unsigned n, bool copy = true);
    bool Key(const char* s, unsigned n, bool copy = true);
    bool StartObject() { return start(false); }
    bool StartArray() { return start(true); }
    bool EndObject(unsigned = 0) { return end(); }
    bool EndArray(unsigned = 0) { return end(); }

    const std::optional<FetchFinding>& finding() const { return found_; }
    // Whether a String event now would read its text (a "type" value, a URL
    // input): when not, Null() counts the value exactly as String would, and
    // the caller need not decode it (rewrite_model's escaped prompt text).
    bool reads_string() const;

private:
    struct Frame {
        bool array = false;
        std::string key_in_parent;  // normalised key this container is the value of (inherited through arrays)
        std::string key;            // objects: normalised current key
        std::string raw_key;        // objects: current key as sent (clipped), for the path
        std::size_t index = 0;      // arrays: index of the next element
    };
    bool scalar();
    bool start(bool array);
    bool end();
    std::string value_path() const;  // built only for a finding: no string work per container
    std::string_view value_key() const;
    std::string_view parent_key() const;
    bool finding(std::string where, std::string_view what);

    std::size_t log_max_;
    // A chat request nests 4-6 deep: the frames of a usual body live in the
    // scanner itself, so a request's scan allocates nothing (the frame
    // vector was one heap allocation per request); deeper bodies spill to the
    // heap (kept until the scanner goes: at most twice the deepest vector).
    static constexpr std::size_t kInlineFrames = 8;
    alignas(Frame) std::byte frame_room_[kInlineFrames * sizeof(Frame)];
    std::pmr::monotonic_buffer_resource frame_arena_{frame_room_, sizeof(frame_room_)};
    std::pmr::vector<Frame> stack_{&frame_arena_};
    std::size_t depth_ = 0;  // frames in use (stack_ keeps the strings of deeper ones for reuse)
    std::optional<FetchFinding> found_;
};

// Scans BODY (a JSON object as rewrite_model emitted it) at every depth, and
// the client's anthropic-beta headers. Keys and "type" values are compared
// case-insensitively with '-' read as '_', and every duplicate of a key is
// looked at (providers differ in which one they keep). data: URLs are not
// fetches. nullopt when the request asks for none.
std::optional<FetchFinding> find_provider_fetch(std::string_view body, const HeaderList& client_headers,
                                                std::size_t log_max = kLogStringMax);
// The same answer from a body already scanned (BODY_SCAN fed by rewrite_model):
// the anthropic-beta headers first, then what the scanner found.
std::optional<FetchFinding> find_provider_fetch(const FetchScanner& body_scan, const HeaderList& client_headers,
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
