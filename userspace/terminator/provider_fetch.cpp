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
void norm_into(std::string& o, std::string_view s) {
    o.assign(s);
    for (char& c : o) {
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');  // ASCII only, whatever the locale
        else if (c == '-') c = '_';
    }
}
std::string norm(std::string_view s) {
    std::string o;
    norm_into(o, s);
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

FetchScanner::FetchScanner(std::size_t log_max) : log_max_(log_max) {
    stack_.reserve(kInlineFrames);  // exactly the inline room
}

std::string FetchScanner::value_path() const {
    // Each container's path is the value path its parent had when it opened;
    // a parent's key and index do not move while a child is open, so the
    // whole path can be rebuilt from the frames now.
    std::string p;
    for (std::size_t i = 0; i < depth_; ++i) {
        const Frame& f = stack_[i];
        if (f.array)
            p += "[" + std::to_string(f.index) + "]";
        else
            p = p.empty() ? f.raw_key : p + "." + f.raw_key;
    }
    return p;
}

std::string_view FetchScanner::value_key() const {
    if (depth_ == 0) return {};
    const Frame& f = stack_[depth_ - 1];
    return f.array ? std::string_view(f.key_in_parent) : std::string_view(f.key);
}

std::string_view FetchScanner::parent_key() const {
    if (depth_ == 0) return {};
    return stack_[depth_ - 1].key_in_parent;
}

bool FetchScanner::finding(std::string where, std::string_view what) {
    found_ = FetchFinding{"body " + clip(where, log_max_), std::string(what)};
    return false;  // one finding is enough for the 400
}

bool FetchScanner::scalar() {
    if (found_) return false;
    if (depth_ != 0 && stack_[depth_ - 1].array) ++stack_[depth_ - 1].index;
    return true;
}

bool FetchScanner::reads_string() const {
    if (found_) return false;
    const std::string_view k = value_key();
    return k == "type" || is_url_input_key(k) || (k == "url" && is_url_input_key(parent_key()));
}

bool FetchScanner::String(const char* s, unsigned n, bool) {
    if (found_) return false;
    std::string_view v(s, n);
    std::string_view k = value_key();
    if (k == "type") {
        if (const TypeRule* r = fetch_type(norm(v)))
            return finding(value_path() + " \"" + clip(v, log_max_) + "\"", r->what);
    }
    if ((is_url_input_key(k) || (k == "url" && is_url_input_key(parent_key()))) && !is_data_url(v))
        return finding(value_path(), k == "file_url" || parent_key() == "file_url" ? "a file input given by URL"
                                                                                   : "an image input given by URL");
    return scalar();
}

bool FetchScanner::Key(const char* s, unsigned n, bool) {
    if (found_) return false;
    Frame& f = stack_[depth_ - 1];
    const std::string_view k(s, n);
    norm_into(f.key, k);
    if (clipped(k, log_max_))
        f.raw_key = clip(k, log_max_);
    else
        f.raw_key.assign(k);
    for (const auto& r : kFetchKeys)
        if (f.key == r.key) return finding(value_path(), r.what);
    return true;
}

bool FetchScanner::start(bool array) {
    if (found_) return false;
    // Frames above depth_ are kept: their strings' room is reused.
    if (depth_ == stack_.size()) stack_.emplace_back();
    Frame& f = stack_[depth_];
    f.key_in_parent.assign(value_key());
    f.array = array;
    f.key.clear();
    f.raw_key.clear();
    f.index = 0;
    ++depth_;
    return true;
}

bool FetchScanner::end() {
    if (found_) return false;
    --depth_;
    return scalar();
}

std::optional<FetchFinding> find_provider_fetch(std::string_view body, const HeaderList& client_headers,
                                                std::size_t log_max) {
    if (auto h = beta_header_fetch(client_headers, log_max)) return h;
    FetchScanner sc(log_max);
    rapidjson::MemoryStream ms(body.data(), body.size());
    rapidjson::Reader reader;
    // Iterative: bounded stack whatever the nesting. Numbers stay text (no
    // conversion work); the body was validated by rewrite_model already.
    reader.Parse<rapidjson::kParseIterativeFlag | rapidjson::kParseNumbersAsStringsFlag>(ms, sc);
    return sc.finding();
}

std::optional<FetchFinding> find_provider_fetch(const FetchScanner& body_scan, const HeaderList& client_headers,
                                                std::size_t log_max) {
    if (auto h = beta_header_fetch(client_headers, log_max)) return h;
    return body_scan.finding();
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
