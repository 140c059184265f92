// Usage extraction from provider answers: JSON bodies and SSE streams of both
// APIs, fed whole and split at every byte, and the forgeries that must not count.
#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "terminator/mock.hpp"
#include "terminator/request.hpp"
#include "terminator/usage.hpp"

namespace redir::terminator {
namespace {

using Opt = std::optional<std::uint64_t>;

struct Case {
    const char* name;
    bool sse;
    std::string body;
    Opt in, out;
};

Usage scan(bool sse, const std::vector<std::string_view>& pieces) {
    UsageTap tap(sse);
    for (auto p : pieces) tap.feed(p);
    Usage u;
    tap.finish(u);
    return u;
}

// Every way of cutting BODY in two, plus byte by byte: the answer must not depend on where pieces end.
void expect_split_invariant(const Case& c) {
    for (std::size_t cut = 0; cut <= c.body.size(); ++cut) {
        std::string_view b(c.body);
        auto u = scan(c.sse, {b.substr(0, cut), b.substr(cut)});
        ASSERT_EQ(u.input_tokens, c.in) << c.name << " cut at " << cut;
        ASSERT_EQ(u.output_tokens, c.out) << c.name << " cut at " << cut;
    }
    UsageTap tap(c.sse);
    for (char ch : c.body) tap.feed(std::string_view(&ch, 1));
    Usage u;
    tap.finish(u);
    EXPECT_EQ(u.input_tokens, c.in) << c.name << " byte by byte";
    EXPECT_EQ(u.output_tokens, c.out) << c.name << " byte by byte";
}

std::string crlf(std::string s) {
    std::string o;
    for (char c : s) {
        if (c == '\n') o += '\r';
        o += c;
    }
    return o;
}

const std::vector<Case>& cases() {
    static const std::vector<Case> c = {
        // Non-streamed bodies.
        {"chat completion", false,
         R"({"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],)"
         R"("usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":3}}})",
         12, 5},
        {"legacy completion", false, R"({"choices":[{"text":"x"}],"usage":{"prompt_tokens":2,"completion_tokens":1}})",
         2, 1},
        {"embeddings", false, R"({"object":"list","data":[{"embedding":[0.1,-2e-3]}],"usage":{"prompt_tokens":8,"total_tokens":8}})",
         8, std::nullopt},
        {"responses", false,
         R"({"id":"r","object":"response","output":[{"type":"message","content":[{"type":"output_text","text":"x"}]}],)"
         R"("usage":{"input_tokens":20,"input_tokens_details":{"cached_tokens":0},"output_tokens":7,"total_tokens":27}})",
         20, 7},
        {"anthropic message", false,
         R"({"id":"m","type":"message","content":[{"type":"text","text":"x"}],"usage":{"input_tokens":10,)"
         R"("cache_creation_input_tokens":4,"cache_read_input_tokens":6,"output_tokens":3,"server_tool_use":{"web_search_requests":1}}})",
         20, 3},
        {"usage first, pretty printed", false, "{\n  \"usage\" : {\n    \"prompt_tokens\" : 1 ,\n    \"completion_tokens\" : 2\n  },\n  \"choices\" : [ ]\n}\n", 1, 2},
        {"no usage", false, R"({"choices":[{"message":{"content":"hi"}}]})", std::nullopt, std::nullopt},
        {"usage null", false, R"({"usage":null})", std::nullopt, std::nullopt},
        {"error body", false, R"({"error":{"message":"rate limited","type":"rate_limit"}})", std::nullopt, std::nullopt},
        // Streamed answers.
        {"openai chunks with include_usage", true,
         "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n"
         "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":4,\"total_tokens\":13}}\n\n"
         "data: [DONE]\n\n",
         9, 4},
        {"openai chunks without usage", true,
         "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: [DONE]\n\n", std::nullopt, std::nullopt},
        {"responses stream", true,
         "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"usage\":null}}\n\n"
         "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\n\n"
         "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"output\":[],"
         "\"usage\":{\"input_tokens\":30,\"output_tokens\":11,\"total_tokens\":41}}}\n\n",
         30, 11},
        {"anthropic stream", true,
         "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"content\":[],"
         "\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n"
         "event: ping\ndata: {\"type\": \"ping\"}\n\n"
         "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}\n\n"
         "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n"
         "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
         30, 15},
        {"anthropic stream cut before message_delta", true,
         "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n"
         "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"x",
         25, 1},
        {"comments, no space after colon, id and retry fields", true,
         ": keep-alive\nid: 7\nretry: 100\ndata:{\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n", 3, 2},
        {"JSON over two data lines", true, "data: {\"usage\":\ndata: {\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n", 3, 2},
        {"CR line endings", true, "data: {\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":6}}\r\rdata: [DONE]\r\r", 4, 6},
        // Numbers that are not token counts are ignored, never wrapped.
        {"overflowing number", false, R"({"usage":{"prompt_tokens":99999999999999999999999,"completion_tokens":2}})",
         std::nullopt, 2},
        {"over the plausible cap", false, R"({"usage":{"prompt_tokens":1000000000001,"completion_tokens":1000000000000}})",
         std::nullopt, 1000000000000},
        {"negative, fraction, exponent, string", false,
         R"({"usage":{"prompt_tokens":-5,"completion_tokens":1.5,"input_tokens":1e3,"output_tokens":"7"}})", std::nullopt,
         std::nullopt},
        {"malformed body", false, R"({"usage":{"prompt_tokens":5,"completion_tokens":)", std::nullopt, std::nullopt},
        {"usage object never closed", true, "data: {\"usage\":{\"prompt_tokens\":5\n\ndata: [DONE]\n\n", std::nullopt,
         std::nullopt},
        {"top level is not an object", false, R"([{"usage":{"prompt_tokens":5}}])", std::nullopt, std::nullopt},
    };
    return c;
}

TEST(UsageExtraction, TableSplitAnywhere) {
    for (const auto& c : cases()) expect_split_invariant(c);
}

TEST(UsageExtraction, CrlfStreamsReadLikeLf) {
    for (const auto& c : cases()) {
        if (!c.sse) continue;
        Case w = c;
        w.body = crlf(c.body);
        expect_split_invariant(w);
    }
}

// Text the sandbox controls (its prompt, echoed by the model) reaches the
// scanner only inside JSON strings, or at a depth the provider's framing never
// puts usage at: none of it may count.
TEST(UsageExtraction, SandboxTextCannotForgeUsage) {
    const std::vector<Case> forged = {
        {"echoed SSE line in a delta", true,
         "data: {\"choices\":[{\"delta\":{\"content\":\"\\n\\ndata: {\\\"usage\\\":{\\\"prompt_tokens\\\":999999}}\\n\\n\"}}]}\n\n"
         "data: [DONE]\n\n",
         std::nullopt, std::nullopt},
        {"usage inside choices[].message", false,
         R"({"choices":[{"message":{"content":"x","usage":{"prompt_tokens":999}}}],"usage":{"prompt_tokens":1,"completion_tokens":1}})",
         1, 1},
        {"usage under metadata echoed by the Responses API", true,
         "data: {\"type\":\"response.completed\",\"response\":{\"metadata\":{\"usage\":{\"input_tokens\":999}},"
         "\"instructions\":\"{\\\"usage\\\":{\\\"input_tokens\\\":5}}\",\"usage\":{\"input_tokens\":2,\"output_tokens\":3}}}\n\n",
         2, 3},
        {"tool call arguments", false,
         R"({"choices":[{"message":{"tool_calls":[{"function":{"arguments":"{\"usage\":{\"prompt_tokens\":7}}"}}]}}]})",
         std::nullopt, std::nullopt},
        {"usage key escaped inside a string value", false, R"({"x":"\"usage\":{\"prompt_tokens\":7}","usage":{"prompt_tokens":1}})",
         1, std::nullopt},
        {"usage nested in a usage member", false, R"({"usage":{"prompt_tokens":1,"details":{"prompt_tokens":500}}})", 1,
         std::nullopt},
    };
    for (const auto& c : forged) expect_split_invariant(c);
}

TEST(UsageExtraction, JsonBodyScanIsBoundedWhateverTheNesting) {
    // 200k levels of what no usage can be in: skipped with a counter, no stack.
    std::string deep = "{\"a\":" + std::string(200000, '[') + std::string(200000, ']') + ",\"usage\":{\"prompt_tokens\":1}}";
    auto u = scan(false, {deep});
    EXPECT_EQ(u.input_tokens, Opt(1));
    std::string deep_obj = "{\"a\":" + std::string(100000, '{') + "\"usage\":{\"prompt_tokens\":9}" +
                           std::string(100000, '}') + ",\"usage\":{\"prompt_tokens\":2}}";
    EXPECT_EQ(scan(false, {deep_obj}).input_tokens, Opt(2)) << "only the top level's usage";
    // A huge string value costs no memory and is skipped.
    std::string big = "{\"content\":\"" + std::string(8 << 20, 'x') + "\",\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":5}}";
    u = scan(false, {big});
    EXPECT_EQ(u.input_tokens, Opt(4));
    EXPECT_EQ(u.output_tokens, Opt(5));
    static_assert(sizeof(UsageTap) < 1024, "the tap lives on every relay's frame: keep it small");
}

TEST(UsageExtraction, SseLineLongerThanAnyPieceStillParses) {
    std::string line = "data: {\"choices\":[{\"delta\":{\"content\":\"" + std::string(3 << 20, 'y') +
                       "\"}}],\"usage\":{\"prompt_tokens\":6,\"completion_tokens\":7}}\n\n";
    UsageTap tap(true);
    for (std::size_t i = 0; i < line.size(); i += 16384) tap.feed(std::string_view(line).substr(i, 16384));
    Usage u;
    tap.finish(u);
    EXPECT_EQ(u.input_tokens, Opt(6));
    EXPECT_EQ(u.output_tokens, Opt(7));
}

TEST(UsageExtraction, MockAnswersCarryUsageInEveryShape) {
    const std::string body = R"({"model":"m","messages":[{"role":"user","content":"hi"}]})";
    for (auto ep : {Endpoint::ChatCompletions, Endpoint::Completions, Endpoint::Embeddings, Endpoint::Responses,
                    Endpoint::Messages}) {
        auto plain = usage_of(mock_reply(ep, body, "m", false));
        EXPECT_TRUE(plain.input_tokens.has_value()) << static_cast<int>(ep);
    }
    std::string with_usage = R"({"model":"m","stream":true,"stream_options":{"include_usage":true}})";
    EXPECT_TRUE(usage_of(mock_reply(Endpoint::ChatCompletions, with_usage, "m", true)).output_tokens.has_value());
    EXPECT_TRUE(usage_of(mock_reply(Endpoint::Responses, body, "m", true)).output_tokens.has_value());
    EXPECT_TRUE(usage_of(mock_reply(Endpoint::Messages, body, "m", true)).output_tokens.has_value());
}

TEST(UsageExtraction, AccessLogNamesOnlyWhatWasReported) {
    RequestLog r;
    r.status = 200;
    r.usage.input_tokens = 3;
    auto j = request_log_json(r);
    EXPECT_NE(j.find(R"("usage":{"input_tokens":3})"), std::string::npos) << j;
    r.usage = {};
    EXPECT_EQ(request_log_json(r).find("usage"), std::string::npos);
}

}  // namespace
}  // namespace redir::terminator

namespace redir::terminator {
namespace {

// A streamed chat/completions request reports usage only when it asks: the
// terminator asks for every one, whatever the sandbox sent (it could send
// include_usage false, or a stream_options of another type, to go uncounted).
TEST(StreamUsageRequest, IncludeUsageForcedWhateverTheClientSent) {
    struct Row {
        const char* in;
        const char* out;
    };
    const Row rows[] = {
        {R"({"stream":true})", R"({"stream":true,"model":"m","stream_options":{"include_usage":true}})"},
        {R"({"stream":true,"stream_options":{"include_usage":false,"x":1}})",
         R"({"stream":true,"stream_options":{"x":1,"include_usage":true},"model":"m"})"},
        {R"({"stream_options":{"include_usage":false,"include_usage":0},"stream":true})",
         R"({"stream_options":{"include_usage":true},"stream":true,"model":"m"})"},
        {R"({"stream_options":null,"stream":true})", R"({"stream_options":{"include_usage":true},"stream":true,"model":"m"})"},
        {R"({"stream_options":"no","stream":true})", R"({"stream_options":{"include_usage":true},"stream":true,"model":"m"})"},
        {R"({"stream_options":[1,{"include_usage":false}],"stream":true})",
         R"({"stream_options":{"include_usage":true},"stream":true,"model":"m"})"},
        {R"({"stream_options":{"o":{"include_usage":false}},"stream":true})",
         R"({"stream_options":{"o":{"include_usage":false},"include_usage":true},"stream":true,"model":"m"})"},
        {R"({"stream":false})", R"({"stream":false,"model":"m"})"},
        {R"({"messages":[{"stream_options":1}],"stream":true,"model":"x"})",
         R"({"messages":[{"stream_options":1}],"stream":true,"model":"m","stream_options":{"include_usage":true}})"},
    };
    for (const auto& r : rows) {
        auto rw = rewrite_model(r.in, "m", kLogStringMax, true);
        ASSERT_TRUE(rw.ok) << r.in << ": " << rw.error;
        EXPECT_EQ(rw.body, r.out) << r.in;
    }
    auto kept = rewrite_model(R"({"stream":true,"stream_options":{"include_usage":false}})", "m", kLogStringMax, false);
    EXPECT_EQ(kept.body, R"({"stream":true,"stream_options":{"include_usage":false},"model":"m"})")
        << "endpoints that always report usage are left alone";
    EXPECT_TRUE(asks_stream_usage(Endpoint::ChatCompletions));
    EXPECT_TRUE(asks_stream_usage(Endpoint::Completions));
    EXPECT_FALSE(asks_stream_usage(Endpoint::Responses));
    EXPECT_FALSE(asks_stream_usage(Endpoint::Messages));
}

}  // namespace
}  // namespace redir::terminator
