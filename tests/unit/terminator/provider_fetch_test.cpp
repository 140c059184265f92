// Every request field that makes a provider reach the network, per API, as a
// table: refused cases name the place; allowed cases pass untouched. Plus the
// account headers a sandbox may not choose.
#include <gtest/gtest.h>

#include "terminator/profiles.hpp"
#include "terminator/provider_fetch.hpp"
#include "terminator/request.hpp"

using namespace redir::terminator;

namespace {

struct Case {
    const char* api;
    const char* name;
    const char* body;
    const char* where;  // expected substring of FetchFinding::where; nullptr = allowed
    HeaderList headers = {};
};

// The body as the gateway scans it: after rewrite_model (escapes decoded and
// re-emitted, duplicates below the top level kept).
std::optional<FetchFinding> scan(const Case& c) {
    auto rw = rewrite_model(c.body, "served-model");
    EXPECT_TRUE(rw.ok) << c.name << ": " << rw.error;
    return find_provider_fetch(rw.body, c.headers);
}

const Case kCases[] = {
    // ---- OpenAI Responses API (/v1/responses)
    {"responses", "mcp tool", R"({"tools":[{"type":"mcp","server_label":"x","server_url":"https://203.0.113.9/mcp"}]})",
     "tools[0].type"},
    {"responses", "mcp tool, url first", R"({"tools":[{"server_url":"https://203.0.113.9/mcp","type":"mcp"}]})",
     "tools[0].server_url"},
    {"responses", "connector", R"({"tools":[{"server_label":"g","connector_id":"connector_gmail"}]})",
     "tools[0].connector_id"},
    {"responses", "MCP upper case", R"({"tools":[{"type":"MCP"}]})", "tools[0].type"},
    {"responses", "web_search", R"({"tools":[{"type":"function","name":"f"},{"type":"web_search"}]})",
     "tools[1].type"},
    {"responses", "web_search_preview", R"({"tools":[{"type":"web_search_preview"}]})", "tools[0].type"},
    {"responses", "dated web search", R"({"tools":[{"type":"web_search_preview_2025_03_11"}]})", "tools[0].type"},
    {"responses", "web-search dashes", R"({"tools":[{"type":"Web-Search"}]})", "tools[0].type"},
    {"responses", "tool_choice mcp", R"({"tool_choice":{"type":"mcp","server_label":"x"}})", "tool_choice.type"},
    {"responses", "escaped key and value", R"({"\u0074ools":[{"\u0074ype":"\u006dcp"}]})", "tools[0].type"},
    {"responses", "duplicate type, fetch second", R"({"tools":[{"type":"function","type":"web_search"}]})",
     "tools[0].type"},
    {"responses", "input_image by URL",
     R"({"input":[{"role":"user","content":[{"type":"input_text","text":"hi"},{"type":"input_image","image_url":"https://203.0.113.9/a.png"}]}]})",
     "input[0].content[1].image_url"},
    {"responses", "input_file by URL",
     R"({"input":[{"role":"user","content":[{"type":"input_file","file_url":"https://203.0.113.9/a.pdf"}]}]})",
     "input[0].content[0].file_url"},
    {"responses", "mcp approval replayed", R"({"input":[{"type":"mcp_approval_response","approve":true}]})",
     "input[0].type"},
    {"responses", "mcp call replayed", R"({"input":[{"type":"mcp_call","server_label":"x"}]})", "input[0].type"},
    {"responses", "deep nesting", R"({"metadata":{},"input":[[[[{"x":[{"tools":[{"type":"mcp"}]}]}]]]]})",
     "tools[0].type"},
    {"responses", "image_url key upper case", R"({"input":[{"content":[{"Image_URL":"https://203.0.113.9/a"}]}]})",
     "Image_URL"},
    // ---- OpenAI Chat Completions (/v1/chat/completions)
    {"chat", "image_url part",
     R"({"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://203.0.113.9/a.png","detail":"high"}}]}]})",
     "messages[0].content[0].image_url.url"},
    {"chat", "mixed parts, second image by URL",
     R"({"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}},{"type":"image_url","image_url":{"url":"HTTP://203.0.113.9/b"}}]}]})",
     "messages[0].content[2].image_url.url"},
    {"chat", "leading space is not data:",
     R"({"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":" data:x"}}]}]})",
     "image_url.url"},
    {"chat", "duplicate url, fetch second",
     R"({"messages":[{"content":[{"image_url":{"url":"data:,x","url":"https://203.0.113.9/"}}]}]})",
     "image_url.url"},
    {"chat", "image_url as a bare string", R"({"messages":[{"content":[{"image_url":"ftp://203.0.113.9/x"}]}]})",
     "content[0].image_url"},
    {"chat", "image_url array of urls", R"({"messages":[{"content":[{"image_url":["data:,a","https://x"]}]}]})",
     "image_url[1]"},
    {"chat", "file part by URL", R"({"messages":[{"content":[{"type":"file","file":{"file_url":"https://x/a.pdf"}}]}]})",
     "file.file_url"},
    {"chat", "web_search_options", R"({"messages":[],"web_search_options":{}})", "web_search_options"},
    // ---- Anthropic Messages (/v1/messages)
    {"messages", "mcp_servers",
     R"({"messages":[],"mcp_servers":[{"type":"url","url":"https://203.0.113.9/sse","name":"x"}]})", "mcp_servers"},
    {"messages", "Mcp-Servers spelling", R"({"Mcp-Servers":[]})", "Mcp-Servers"},
    {"messages", "web_search tool", R"({"tools":[{"type":"web_search_20250305","name":"web_search"}]})",
     "tools[0].type"},
    {"messages", "web_fetch tool", R"({"tools":[{"type":"web_fetch_20250910","name":"web_fetch"}]})",
     "tools[0].type"},
    {"messages", "image source by URL",
     R"({"messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"https://x/a.png"}}]}]})",
     "messages[0].content[0].source.type"},
    {"messages", "document source by URL",
     R"({"messages":[{"role":"user","content":[{"type":"document","source":{"type":"URL","url":"https://x/a.pdf"}}]}]})",
     "source.type"},
    {"messages", "beta header mcp-client", R"({"messages":[]})", "header anthropic-beta",
     {{"anthropic-beta", "mcp-client-2025-04-04"}}},
    {"messages", "beta header, list and case", R"({"messages":[]})", "MCP-Client-2025-11-20",
     {{"anthropic-beta", "prompt-caching-2024-07-31"}, {"anthropic-beta", "tools-2024-04-04 , MCP-Client-2025-11-20"}}},
    {"messages", "beta header web-fetch", R"({"messages":[]})", "web-fetch", {{"anthropic-beta", "web-fetch-2025-09-10"}}},

    // ---- allowed
    {"chat", "plain chat", R"({"messages":[{"role":"user","content":"see https://example.com"}]})", nullptr},
    {"chat", "image by data: URL",
     R"({"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA","detail":"low"}}]}]})",
     nullptr},
    {"chat", "upper-case DATA:", R"({"messages":[{"content":[{"image_url":{"url":"DATA:image/png;base64,AA"}}]}]})",
     nullptr},
    {"chat", "function tool with url parameters",
     R"({"tools":[{"type":"function","function":{"name":"get","parameters":{"type":"object","properties":{"url":{"type":"string"},"image_url":{"type":"string","description":"where"}}}}}]})",
     nullptr},
    {"chat", "url_citation annotation replayed",
     R"({"messages":[{"role":"assistant","content":"x","annotations":[{"type":"url_citation","url_citation":{"url":"https://x"}}]}]})",
     nullptr},
    {"responses", "function and file_search tools", R"({"tools":[{"type":"function","name":"f"},{"type":"file_search"}]})",
     nullptr},
    {"responses", "input_image by file id",
     R"({"input":[{"role":"user","content":[{"type":"input_image","file_id":"file-1"}]}]})", nullptr},
    {"messages", "base64 image", R"({"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"AAAA"}}]}]})",
     nullptr},
    {"messages", "harmless beta header", R"({"messages":[]})", nullptr,
     {{"anthropic-beta", "prompt-caching-2024-07-31,tools-2024-04-04"}}},
    {"embeddings", "input text", R"({"input":["mcp","web_search","https://x"]})", nullptr},
};

}  // namespace

TEST(ProviderFetch, EveryFieldPerApi) {
    for (const auto& c : kCases) {
        auto f = scan(c);
        if (!c.where) {
            EXPECT_FALSE(f) << c.api << " / " << c.name << ": refused at " << f->where;
            continue;
        }
        ASSERT_TRUE(f) << c.api << " / " << c.name << ": not refused";
        EXPECT_NE(f->where.find(c.where), std::string::npos)
            << c.api << " / " << c.name << ": found at " << f->where << ", expected " << c.where;
        auto msg = provider_fetch_refusal(*f);
        EXPECT_NE(msg.find("\"provider_fetch\": true"), std::string::npos) << msg;
        EXPECT_NE(msg.find(f->where), std::string::npos) << msg;
    }
}

TEST(ProviderFetch, ClientTextInTheMessageIsClipped) {
    std::string long_key(5000, 'k');
    std::string body = R"({"a":{")" + long_key + R"(":{"tools":[{"type":"mcp)" + std::string(5000, 'x') + R"("}]}}})";
    auto f = find_provider_fetch(body, {}, 64);
    ASSERT_TRUE(f);
    EXPECT_LT(provider_fetch_refusal(*f).size(), 1000u);
}

TEST(ProviderFetch, AccountHeadersComeFromTheProviderOnly) {
    const Profile& openai = *find_profile("openai");
    HeaderList client = {{"openai-organization", "org-sandbox"}, {"openai-project", "proj-sandbox"},
                         {"OpenAI-Organization", "ignored-non-lower"}, {"openai-beta", "assistants=v2"}};
    auto values = [](const HeaderList& h, std::string_view n) {
        std::vector<std::string> v;
        for (auto& [k, val] : h)
            if (k == n) v.push_back(val);
        return v;
    };
    Provider none{"o", "openai", "https://api.openai.com/v1", "", {{"OPENAI_API_KEY", "sk-1"}}};
    auto out = upstream_headers(client, openai, none);
    EXPECT_TRUE(values(out, "openai-organization").empty());
    EXPECT_TRUE(values(out, "openai-project").empty());
    EXPECT_EQ(values(out, "openai-beta"), std::vector<std::string>{"assistants=v2"});

    Provider pinned{"o", "openai", "https://api.openai.com/v1", "",
                    {{"OPENAI_API_KEY", "sk-1"}, {"OPENAI_ORG_ID", "org-op"}, {"OPENAI_PROJECT_ID", "proj-op"}}};
    out = upstream_headers(client, openai, pinned);
    EXPECT_EQ(values(out, "openai-organization"), std::vector<std::string>{"org-op"});
    EXPECT_EQ(values(out, "openai-project"), std::vector<std::string>{"proj-op"});
    EXPECT_EQ(values(out, "authorization"), std::vector<std::string>{"Bearer sk-1"});

    for (const char* t : {"openai-compatible", "anthropic", "nvidia", "mock"}) {
        out = upstream_headers(client, *find_profile(t), none);
        EXPECT_TRUE(values(out, "openai-organization").empty()) << t;
        EXPECT_TRUE(values(out, "openai-project").empty()) << t;
    }
}

// ---- One pass: the scan rides rewrite_model's parse (the gateway's path).

namespace {

struct Outcome {
    bool ok = false;
    std::string error;  // the rewrite's 400, when !ok
    std::optional<FetchFinding> fetch;
};

// The old path: rewrite, then a second parse of the written body.
Outcome two_pass(std::string_view body, bool force_usage, const HeaderList& h = {}) {
    auto rw = rewrite_model(body, "served-model", kLogStringMax, force_usage);
    if (!rw.ok) return {false, rw.error, std::nullopt};
    return {true, "", find_provider_fetch(rw.body, h)};
}

Outcome one_pass(std::string_view body, bool force_usage, const HeaderList& h = {}) {
    FetchScanner sc;
    auto rw = rewrite_model(body, "served-model", kLogStringMax, force_usage, &sc);
    if (!rw.ok) return {false, rw.error, std::nullopt};
    return {true, "", find_provider_fetch(sc, h)};
}

void expect_same(std::string_view body, bool force_usage, const std::string& label, const HeaderList& h = {}) {
    auto a = two_pass(body, force_usage, h), b = one_pass(body, force_usage, h);
    EXPECT_EQ(a.ok, b.ok) << label;
    EXPECT_EQ(a.error, b.error) << label;
    ASSERT_EQ(a.fetch.has_value(), b.fetch.has_value()) << label << (a.fetch ? " two-pass: " + a.fetch->where : "")
                                                        << (b.fetch ? " one-pass: " + b.fetch->where : "");
    if (a.fetch) {
        EXPECT_EQ(a.fetch->where, b.fetch->where) << label;
        EXPECT_EQ(a.fetch->what, b.fetch->what) << label;
    }
}

}  // namespace

TEST(ProviderFetchOnePass, SameFindingAsASecondParseForEveryTableCase) {
    for (const auto& c : kCases)
        for (bool force : {false, true}) expect_same(c.body, force, std::string(c.api) + " / " + c.name, c.headers);
}

// Bodies built so that what the client sent and what leaves differ: the scan
// must judge what leaves (as the second parse did), and a malformed body is
// refused as malformed even when a fetch comes first.
TEST(ProviderFetchOnePass, HostileBodiesAreJudgedExactlyAsBefore) {
    const std::string deep = std::string(20000, '[') + R"({"type":"mcp"})" + std::string(20000, ']');
    struct Hostile {
        const char* name;
        std::string body;
        bool force_usage;
        int expect;  // 0 allowed, 1 fetch refused, 2 malformed (rewrite 400)
    } cases[] = {
        {"escaped key typ\\u0065", R"({"tools":[{"typ\u0065":"mcp"}]})", false, 1},
        {"escaped value", R"({"tools":[{"type":"\u006d\u0063\u0070"}]})", false, 1},
        {"escaped top key mcp_servers", R"({"mcp\u005fservers":[]})", false, 1},
        {"NUL inside the key", R"({"tools":[{"ty\u0000pe":"mcp"}]})", false, 0},
        {"nested duplicate, fetch first", R"({"tools":[{"type":"mcp","type":"function"}]})", false, 1},
        {"nested duplicate, fetch last", R"({"tools":[{"type":"function","type":"mcp"}]})", false, 1},
        {"top-level duplicate with a fetch", R"({"tools":[],"tools":[{"type":"mcp"}]})", false, 2},
        {"top-level duplicate model", R"({"model":"a","model":{"type":"mcp"}})", false, 2},
        {"fetch then invalid JSON", R"({"tools":[{"type":"mcp"}],"x":})", false, 2},
        {"fetch then invalid UTF-8", "{\"tools\":[{\"type\":\"mcp\"}],\"x\":\"\xff\"}", false, 2},
        {"invalid UTF-8 in the type", "{\"tools\":[{\"type\":\"mcp\xc3\"}]}", false, 2},
        {"overlong UTF-8 key", "{\"\xc0\xb4ype\":\"mcp\"}", false, 2},
        {"fetch then trailing garbage", R"({"tools":[{"type":"mcp"}]} x)", false, 2},
        {"deep nesting", R"({"a":)" + deep + "}", false, 1},
        // The client's model is dropped for the configured one: never sent, never judged.
        {"fetch inside the dropped model", R"({"model":{"type":"mcp","server_url":"https://x"}})", false, 0},
        {"model below the top level is kept", R"({"x":{"model":{"type":"mcp"}}})", false, 1},
        // stream_options: kept as an object (judged), replaced otherwise; the
        // client's include_usage is dropped when the terminator sets it.
        {"fetch in kept stream_options", R"({"stream":true,"stream_options":{"type":"mcp"}})", true, 1},
        {"fetch in dropped include_usage", R"({"stream":true,"stream_options":{"include_usage":{"type":"mcp"}}})",
         true, 0},
        {"include_usage kept without force", R"({"stream":true,"stream_options":{"include_usage":{"type":"mcp"}}})",
         false, 1},
        {"fetch in replaced stream_options array", R"({"stream":true,"stream_options":[{"type":"mcp"}]})", true, 0},
        {"array top level", R"([{"type":"mcp"}])", false, 2},
    };
    for (const auto& c : cases) {
        expect_same(c.body, c.force_usage, c.name);
        auto b = one_pass(c.body, c.force_usage);
        EXPECT_EQ(b.ok ? (b.fetch ? 1 : 0) : 2, c.expect) << c.name << ": " << b.error
                                                          << (b.fetch ? b.fetch->where : "");
    }
}

TEST(ProviderFetchOnePass, HeaderFindingComesFirstAndScannerStopsAtItsFinding) {
    HeaderList beta = {{"anthropic-beta", "web-fetch-2025-09-10"}};
    auto b = one_pass(R"({"tools":[{"type":"mcp"}]})", false, beta);
    ASSERT_TRUE(b.fetch);
    EXPECT_EQ(b.fetch->where.rfind("header anthropic-beta", 0), 0u) << b.fetch->where;

    // After a finding every handler says stop and nothing moves the finding.
    FetchScanner sc;
    EXPECT_TRUE(sc.StartObject());
    EXPECT_TRUE(sc.Key("tools", 5));
    EXPECT_TRUE(sc.StartArray());
    EXPECT_TRUE(sc.StartObject());
    EXPECT_TRUE(sc.Key("type", 4));
    EXPECT_FALSE(sc.String("web_search", 10));
    EXPECT_FALSE(sc.Key("mcp_servers", 11));
    EXPECT_FALSE(sc.EndObject());
    EXPECT_FALSE(sc.EndArray());
    ASSERT_TRUE(sc.finding());
    EXPECT_EQ(sc.finding()->where, "body tools[0].type \"web_search\"");
}

TEST(ProviderFetchOnePass, ScannerReusedFramesDoNotCarryOldKeys) {
    // A sibling container opened where a longer-keyed one was must not see
    // the earlier key (frames are reused for their strings' room).
    const char* body = R"({"a":[{"image_url_long_key_name_here":1}],"b":[{"x":{"url":"https://x"}}]})";
    expect_same(body, false, "reused frames");
    EXPECT_FALSE(one_pass(body, false).fetch);
    const char* body2 = R"({"image_url":{"k":1},"b":[{"url":"https://x"}]})";
    expect_same(body2, false, "reused frames 2");
    EXPECT_FALSE(one_pass(body2, false).fetch);
}
