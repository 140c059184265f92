// Finds provider-side fetches in a request (see provider_fetch.hpp).
#include "terminator/provider_fetch.hpp"

#include <rapidjson/reader.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <vector>

namespace redir::terminator {

namespace {

// Lower case with '-' read as '_': "Web-Search" and "web_search" are one name.
std::string norm(std::string_view s) {
    std::string o(s);
    for (char& c : o) {
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        if (c == '-') c = '_';
    }
    return o;
}

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

// Keys that only ever ask the provider to reach a server: Anthropic's
// mcp_servers, OpenAI chat's web_search_options, the MCP tool's fields.
struct KeyRule {
    std::string_view key;
    std::string_view what;
};
constexpr std::array<KeyRule, 4> kFetchKeys = {{
    {"mcp_servers", "MCP servers for the provider to call"},
    {"web_search_options", "a web search by the provider"},
    {"server_url", "an MCP server for the provider to call"},
    {"connector_id", "a connector for the provider to call"},
}};

// "type" values naming a fetching tool or a source given by URL; prefixes
// cover every dated variant (web_search_preview_2025_03_11, web_search_20250305,
// web_fetch_20250910, mcp_call, mcp_approval_response, ...).
struct TypeRule {
    std::string_view prefix;
    bool exact;
    std::string_view what;
};
constexpr std::array<TypeRule, 4> kFetchTypes = {{
    {"mcp", false, "an MCP tool or call"},
    {"web_search", false, "a web search tool"},
    {"web_fetch", false, "a web fetch tool"},
    {"url", true, "a source given by URL"},
}};

const TypeRule* fetch_type(std::string_view normalised) {
    for (const auto& r : kFetchTypes)
        if (r.exact ? normalised == r.prefix : starts_with(normalised, r.prefix)) return &r;
    return nullptr;
}

// Keys whose string value (or whose "url" member) is an input the provider
// downloads: chat image_url parts, Responses input_image / input_file.
bool is_url_input_key(std::string_view k) { return k == "image_url" || k == "file_url"; }

// Inline data is not a fetch; anything else (http, https, ftp, a bare host,
// a leading space) is, because the provider decides what it resolves.
bool is_data_url(std::string_view s) { return s.size() >= 5 && norm(s.substr(0, 5)) == "data:"; }

struct Frame {
    bool array = false;
    std::string key_in_parent;  // normalised key this container is the value of (inherited through arrays)
    std::string path;           // JSON path of this container, for the message
    std::string key;            // objects: normalised current key
    std::string raw_key;        // objects: current key as sent (clipped), for the path
    std::size_t index = 0;      // arrays: index of the next element
};

struct Scanner : rapidjson::BaseReaderHandler<rapidjson::UTF8<>, Scanner> {
    std::size_t log_max;
    std::vector<Frame> stack;
    std::optional<FetchFinding> found;

    explicit Scanner(std::size_t lm) : log_max(lm) {}

    // Path of the value about to be read.
    std::string value_path() const {
        if (stack.empty()) return "";
        const Frame& f = stack.back();
        std::string p = f.path;
        if (f.array) return p + "[" + std::to_string(f.index) + "]";
        return p.empty() ? f.raw_key : p + "." + f.raw_key;
    }
    // Key the value about to be read sits under (arrays pass theirs on).
    std::string_view value_key() const {
        if (stack.empty()) return {};
        return stack.back().array ? std::string_view(stack.back().key_in_parent) : std::string_view(stack.back().key);
    }
    std::string_view parent_key() const {
        if (stack.empty()) return {};
        return stack.back().key_in_parent;
    }
    bool finding(std::string where, std::string_view what) {
        found = FetchFinding{"body " + clip(where, log_max), std::string(what)};
        return false;  // stop the parse: one finding is enough for the 400
    }
    void after_value() {
        if (!stack.empty() && stack.back().array) ++stack.back().index;
    }
    bool scalar() { return after_value(), true; }

    bool Null() { return scalar(); }
    bool Bool(bool) { return scalar(); }
    bool Int(int) { return scalar(); }
    bool Uint(unsigned) { return scalar(); }
    bool Int64(int64_t) { return scalar(); }
    bool Uint64(uint64_t) { return scalar(); }
    bool Double(double) { return scalar(); }
    bool RawNumber(const char*, rapidjson::SizeType, bool) { return scalar(); }

    bool String(const char* s, rapidjson::SizeType n, bool) {
        std::string_view v(s, n);
        std::string_view k = value_key();
        if (k == "type") {
            if (const TypeRule* r = fetch_type(norm(v)))
                return finding(value_path() + " \"" + clip(v, log_max) + "\"", r->what);
        }
        if ((is_url_input_key(k) || (k == "url" && is_url_input_key(parent_key()))) && !is_data_url(v))
            return finding(value_path(), k == "file_url" || parent_key() == "file_url"
                                             ? "a file input given by URL"
                                             : "an image input given by URL");
        return scalar();
    }
    bool Key(const char* s, rapidjson::SizeType n, bool) {
        Frame& f = stack.back();
        f.key = norm(std::string_view(s, n));
        f.raw_key = clip(std::string_view(s, n), log_max);
        for (const auto& r : kFetchKeys)
            if (f.key == r.key) return finding(value_path(), r.what);
        return true;
    }
    bool start(bool array) {
        Frame f;
        f.array = array;
        f.key_in_parent = std::string(value_key());
        f.path = value_path();
        stack.push_back(std::move(f));
        return true;
    }
    bool StartObject() { return start(false); }
    bool StartArray() { return start(true); }
    bool end() {
        stack.pop_back();
        after_value();
        return true;
    }
    bool EndObject(rapidjson::SizeType) { return end(); }
    bool EndArray(rapidjson::SizeType) { return end(); }
};

// anthropic-beta tokens that switch on a provider-side fetch
// (mcp-client-2025-04-04, web-fetch-2025-09-10, ...).
std::optional<FetchFinding> beta_header_fetch(const HeaderList& headers, std::size_t log_max) {
    for (const auto& [name, value] : headers) {
        if (name != "anthropic-beta") continue;
        std::string_view rest = value;
        while (!rest.empty()) {
            auto comma = rest.find(',');
            std::string_view tok = rest.substr(0, comma);
            while (!tok.empty() && std::isspace(static_cast<unsigned char>(tok.front()))) tok.remove_prefix(1);
            while (!tok.empty() && std::isspace(static_cast<unsigned char>(tok.back()))) tok.remove_suffix(1);
            std::string t = norm(tok);
            for (std::string_view p : {"mcp", "web_fetch", "web_search"})
                if (starts_with(t, p))
                    return FetchFinding{"header anthropic-beta \"" + clip(tok, log_max) + "\"",
                                        "a beta feature that lets the provider call servers"};
            if (comma == std::string_view::npos) break;
            rest.remove_prefix(comma + 1);
        }
    }
    return std::nullopt;
}

}  // namespace

std::optional<FetchFinding> find_provider_fetch(std::string_view body, const HeaderList& client_headers,
                                                std::size_t log_max) {
    if (auto h = beta_header_fetch(client_headers, log_max)) return h;
    Scanner sc(log_max);
    rapidjson::MemoryStream ms(body.data(), body.size());
    rapidjson::Reader reader;
    // Iterative: bounded stack whatever the nesting. Numbers stay text (no
    // conversion work); the body was validated by rewrite_model already.
    reader.Parse<rapidjson::kParseIterativeFlag | rapidjson::kParseNumbersAsStringsFlag>(ms, sc);
    return sc.found;
}

std::string provider_fetch_refusal(const FetchFinding& f) {
    return "the request asks the provider to reach the network for this sandbox (" + f.where + ": " + f.what +
           "); provider-side fetches are off for this sandbox: an operator may allow them with "
           "\"inference\": {\"provider_fetch\": true} in its policy";
}

bool is_account_header(std::string_view n) { return n == "openai-organization" || n == "openai-project"; }

void add_account_headers(HeaderList& out, const Provider& provider) {
    auto from = [&](std::initializer_list<const char*> keys) -> const std::string* {
        for (const char* k : keys)
            if (auto it = provider.credentials.find(k); it != provider.credentials.end()) return &it->second;
        return nullptr;
    };
    if (auto* org = from({"OPENAI_ORG_ID", "OPENAI_ORGANIZATION"})) out.emplace_back("openai-organization", *org);
    if (auto* proj = from({"OPENAI_PROJECT_ID", "OPENAI_PROJECT"})) out.emplace_back("openai-project", *proj);
}

}  // namespace redir::terminator
