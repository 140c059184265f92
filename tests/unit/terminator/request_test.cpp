#include <gtest/gtest.h>

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/reader.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <climits>
#include <limits>
#include <random>

#include "terminator/mock.hpp"
#include "terminator/provider_fetch.hpp"
#include "terminator/request.hpp"
#include "rewrite_reference.hpp"
#include "terminator_reference.hpp"

namespace redir::terminator {
namespace {

TEST(Rewrite, InsertsModelWhenAbsent) {
    auto r = rewrite_model(R"({"messages":[{"role":"user","content":"hi"}]})", "m1");
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.body, R"({"messages":[{"role":"user","content":"hi"}],"model":"m1"})");
    EXPECT_EQ(r.model_requested, "");
}

TEST(Rewrite, ReplacesInPlaceKeepingNumbersExact) {
    auto r = rewrite_model(R"({"temperature":0.10000000000000001,"model":"gpt-x","n":12345678901234567890,"stream":true})",
                           "m1");
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.body, R"({"temperature":0.10000000000000001,"model":"m1","n":12345678901234567890,"stream":true})");
    EXPECT_EQ(r.model_requested, "gpt-x");
    EXPECT_TRUE(r.stream);
}

TEST(Rewrite, ReplacesNonStringModelAndKeepsNestedModels) {
    auto r = rewrite_model(R"({"model":{"a":[1,{"b":2}]},"tools":[{"model":"keep"}]})", "m1");
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.body, R"({"model":"m1","tools":[{"model":"keep"}]})");
}

TEST(Rewrite, RejectsNonObjectsAndDuplicates) {
    for (const char* body : {"[]", "\"x\"", "42", "null", "", "   ", "{", "{} {}"}) {
        auto r = rewrite_model(body, "m");
        EXPECT_FALSE(r.ok) << body;
        EXPECT_FALSE(r.error.empty());
    }
    auto r = rewrite_model(R"({"model":"a","x":1,"model":"b"})", "m");
    EXPECT_FALSE(r.ok);
    EXPECT_NE(r.error.find("repeats the top-level key \"model\""), std::string::npos) << r.error;
    r = rewrite_model(R"({"a":{"x":1,"x":2}})", "m");  // nested duplicates are the provider's business
    EXPECT_TRUE(r.ok);
    r = rewrite_model("[1]", "m");
    EXPECT_NE(r.error.find("JSON object"), std::string::npos) << r.error;
}

TEST(Rewrite, DeepNestingDoesNotOverflowTheStack) {
    std::string deep = "{\"a\":" + std::string(200000, '[') + std::string(200000, ']') + "}";
    auto r = rewrite_model(deep, "m");
    EXPECT_TRUE(r.ok) << r.error;
}

// The parser's and writer's stacks start in buffers on the caller's stack and
// spill to the heap: strings and nesting past them, and more top-level keys
// than the key arena holds, come out exactly as below them.
TEST(Rewrite, StringsKeysAndNestingPastTheStackBuffers) {
    for (std::size_t n : {100u, 8191u, 8200u, 70000u, 300000u}) {
        std::string text(n, 'x');
        text[n / 2] = '"';  // one escape in the middle
        std::string escaped = text.substr(0, n / 2) + "\\\"" + text.substr(n / 2 + 1);
        std::string body = R"({"messages":[{"role":"user","content":")" + escaped + R"("}],"model":"a"})";
        auto r = rewrite_model(body, "m");
        ASSERT_TRUE(r.ok) << n << ": " << r.error;
        EXPECT_EQ(r.body, R"({"messages":[{"role":"user","content":")" + escaped + R"("}],"model":"m"})") << n;
    }
    std::string many = "{";
    for (int i = 0; i < 3000; ++i) many += "\"key_number_" + std::to_string(i) + "_long_enough_for_the_heap\":" + std::to_string(i) + ",";
    auto ok = rewrite_model(many + "\"last\":1}", "m");
    ASSERT_TRUE(ok.ok) << ok.error;
    EXPECT_EQ(ok.body, many + "\"last\":1,\"model\":\"m\"}");
    auto dup = rewrite_model(many + "\"key_number_1234_long_enough_for_the_heap\":1}", "m");
    EXPECT_FALSE(dup.ok);
    EXPECT_EQ(dup.error, "request body repeats the top-level key \"key_number_1234_long_enough_for_the_heap\"");
    std::string deep = "{\"a\":" + std::string(5000, '[') + "{\"b\":\"" + std::string(9000, 'y') + "\"}" +
                       std::string(5000, ']') + "}";
    auto d = rewrite_model(deep, "m");
    ASSERT_TRUE(d.ok) << d.error;
    EXPECT_EQ(d.body, deep.substr(0, deep.size() - 1) + ",\"model\":\"m\"}");
}

// What rewrite_model answered before it checked UTF-8 itself: a validating
// rapidjson parse's verdict, word for word.
std::string reference_verdict(const std::string& body) {
    rapidjson::BaseReaderHandler<> h;
    rapidjson::MemoryStream ms(body.data(), body.size());
    rapidjson::Reader reader;
    constexpr unsigned flags =
        rapidjson::kParseIterativeFlag | rapidjson::kParseNumbersAsStringsFlag | rapidjson::kParseValidateEncodingFlag;
    auto pr = reader.Parse<flags>(ms, h);
    if (pr) return "ok";
    return std::string("request body is not valid JSON: ") + rapidjson::GetParseError_En(pr.Code()) + " at offset " +
           std::to_string(pr.Offset());
}

TEST(Rewrite, Utf8VerdictIsRapidjsonsForEverySequenceShape) {
    std::vector<std::string> seqs;
    for (int a = 0x80; a < 0x100; ++a)
        for (int b = 0; b < 0x100; ++b) {
            if (b == '"' || b == '\\' || b < 0x20) continue;
            seqs.push_back({static_cast<char>(a), static_cast<char>(b)});
            if (a >= 0xE0)
                for (int c : {0x41, 0x80, 0x9F, 0xA0, 0xBF, 0xC0}) {
                    seqs.push_back({static_cast<char>(a), static_cast<char>(b), static_cast<char>(c)});
                    if (a >= 0xF0)
                        for (int d : {0x41, 0x80, 0xBF, 0xC0})
                            seqs.push_back(
                                {static_cast<char>(a), static_cast<char>(b), static_cast<char>(c), static_cast<char>(d)});
                }
        }
    std::size_t valid = 0;
    for (const auto& q : seqs) {
        // In a string, at its end, as a key, after 8 ASCII bytes (the fast path), and outside any string.
        for (const std::string& body : {"{\"a\":\"" + q + "\"}", "{\"a\":\"x" + q + "z\"}", "{\"" + q + "\":1}",
                                        "{\"abcdefgh\":\"12345678" + q + "\"}", "{\"a\":1}" + q}) {
            auto r = rewrite_model(body, "m");
            const auto want = reference_verdict(body);
            ASSERT_EQ(r.ok ? std::string("ok") : r.error, want) << testing::PrintToString(body);
            valid += r.ok;
        }
    }
    EXPECT_GT(valid, 1000u);  // the valid shapes were among them
}

// Strings leave as the client wrote them (escapes kept); read back, the body
// is what rapidjson's Reader and Writer made of it, and what the rewrite
// wrote when it re-serialised every token (tests/support/rewrite_reference.hpp).
TEST(Rewrite, StringsLeaveAsTheClientWroteThem) {
    std::string every;
    for (int c = 1; c < 0x80; ++c) every += c == '"' ? std::string("\\\"") : c == '\\' ? std::string("\\\\")
                                           : c < 0x20 ? "\\u00" + std::string(1, "0123456789abcdef"[c >> 4]) +
                                                            std::string(1, "0123456789abcdef"[c & 15])
                                                      : std::string(1, static_cast<char>(c));
    for (const std::string& body : std::vector<std::string>{
             R"({"model":"m","s":")" + every + R"("})",
             R"({"model":"m","\u0000k\/":"\ud83d\ude00 \u00e9 \u2028 é 😀","n":[-0.0,1e300,12345678901234567890,1.5E-7],"b":[true,false,null]})",
             R"({"model":"m","nested":{"a":[{"b":"c\"d"},[],{}],"e":""}})",
         }) {
        auto r = rewrite_model(body, "m");
        ASSERT_TRUE(r.ok) << r.error;
        EXPECT_EQ(r.body, body);
        EXPECT_EQ(reference::read_back(r.body), reference::rewrite_model(body, "m").body);
    }
}

// With an escape or none, wherever it sits (key, value, array element,
// nested), a string is copied as it came and reads back as rapidjson read it.
TEST(Rewrite, StringsWithAndWithoutEscapesAtEveryPosition) {
    const std::vector<std::string> raws = {
        "",        "a",        "\\\"",      "ab\\\"",    "\\\\",     "x\\\\",    "\\/",      "a\\/b",
        "\\u0041", "\\u0000",  "\\n\\t",    "tail\\n",   "\\\"head", "\\ud83d\\ude00", "caf\xc3\xa9",
        std::string(40, 'z') + "\\\\" + std::string(40, 'z'),
    };
    for (const auto& raw : raws) {
        for (const std::string& body :
             {R"({"model":"m",")" + raw + R"(":")" + raw + R"("})", R"({"model":"m","a":[")" + raw + R"(",")" + raw + R"("]})",
              R"({"model":"m","k":{")" + raw + R"(":1},"z":")" + raw + R"("})"}) {
            auto r = rewrite_model(body, "m");
            ASSERT_TRUE(r.ok) << body << ": " << r.error;
            EXPECT_EQ(r.body, body);
            EXPECT_EQ(reference::read_back(r.body), reference::rewrite_model(body, "m").body) << body;
        }
    }
}

TEST(Target, DotSegmentsFoldAsBefore) {
    for (const char* p : {"/", "//", "/v1/chat/completions", "/v1//chat///completions/", "/a/../../b", "/../", "/..",
                          "/./a/./b/..", "/a/b/../../../c/./d/..", "/v1/x/../messages", "/.../a", "/a/.b/..c/..",
                          "/%2e%2e/v1/models", "/v1/models/meta/llama-3.1-8b-instruct", "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q"}) {
        auto t = normalise_target(p);
        ASSERT_TRUE(t) << p;
        EXPECT_EQ(t->path, reference::fold_segments(p)) << p;
    }
}

TEST(Target, NormalisesForms) {
    EXPECT_EQ(normalise_target("/v1/chat/completions?x=1")->path, "/v1/chat/completions");
    EXPECT_EQ(normalise_target("/v1/chat/completions?x=1")->query, "x=1");
    EXPECT_EQ(normalise_target("https://inference.local/v1/models")->path, "/v1/models");
    EXPECT_EQ(normalise_target("http://inference.local:443/v1//models/?a")->path, "/v1/models");
    EXPECT_EQ(normalise_target("https://inference.local?q")->path, "/");
    EXPECT_EQ(normalise_target("/v1/x/../messages")->path, "/v1/messages");
    EXPECT_FALSE(normalise_target("*"));
    EXPECT_FALSE(normalise_target("ftp://x/y"));
}

TEST(Route, Matches) {
    std::string id;
    EXPECT_EQ(match_route("/v1/messages", &id), Endpoint::Messages);
    EXPECT_EQ(match_route("/v1/models/meta/llama-3%2e1", &id), Endpoint::ModelById);
    EXPECT_EQ(id, "meta/llama-3.1");
    EXPECT_FALSE(match_route("/v2/chat/completions", &id));
    EXPECT_FALSE(match_route("/v1/chat", &id));
}

TEST(Headers, AllowlistCredentialsDefaultsAndHopByHop) {
    const Profile& anth = *find_profile("anthropic");
    Provider p{"a", "anthropic", "https://api.anthropic.com", "", {{"ANTHROPIC_API_KEY", "sk-ant-secret"}}};
    HeaderList client = {{"authorization", "Bearer sandbox"}, {"x-api-key", "sandbox"},
                         {"cookie", "c=1"},                   {"content-type", "application/json"},
                         {"accept-encoding", "gzip"},         {"connection", "keep-alive, accept-encoding"},
                         {"anthropic-beta", "tools"},         {"openai-organization", "org"},
                         {"x-stainless-lang", "js"}};
    auto out = upstream_headers(client, anth, p);
    auto get = [&](const std::string& n) -> std::vector<std::string> {
        std::vector<std::string> v;
        for (auto& [k, val] : out)
            if (k == n) v.push_back(val);
        return v;
    };
    EXPECT_EQ(get("x-api-key"), std::vector<std::string>{"sk-ant-secret"});
    EXPECT_TRUE(get("authorization").empty());
    EXPECT_TRUE(get("cookie").empty());
    EXPECT_EQ(get("accept-encoding"), std::vector<std::string>{"identity"})
        << "never the sandbox's: a compressed answer's usage could not be read";
    EXPECT_TRUE(get("connection").empty());
    EXPECT_TRUE(get("openai-organization").empty());
    EXPECT_TRUE(get("x-stainless-lang").empty());
    EXPECT_EQ(get("anthropic-beta"), std::vector<std::string>{"tools"});
    EXPECT_EQ(get("anthropic-version"), std::vector<std::string>{"2023-06-01"});
    client.emplace_back("anthropic-version", "2099-01-01");
    out = upstream_headers(client, anth, p);
    EXPECT_EQ(get("anthropic-version"), std::vector<std::string>{"2099-01-01"});
}

TEST(Headers, ProfileExtrasNeverNameCredentials) {
    for (auto t : {"openai", "anthropic", "nvidia", "openai-compatible", "mock"}) {
        for (auto h : find_profile(t)->extra_headers) EXPECT_FALSE(is_credential_header(h)) << t << " " << h;
    }
}

// Defence in depth: even a profile whose pass-through list named a credential
// header never forwards the sandbox's value of it.
TEST(Headers, CredentialHeadersDroppedEvenWhenAProfileNamesThem) {
    Profile prof = *find_profile("openai");
    for (auto h : {"authorization", "x-api-key", "cookie", "x-goog-api-key", "proxy-authorization"})
        prof.extra_headers.push_back(h);
    Provider p{"o", "openai", "https://api.openai.com/v1", "", {{"OPENAI_API_KEY", "sk-real"}}};
    HeaderList client = {{"authorization", "Bearer sandbox"}, {"x-api-key", "sandbox"}, {"cookie", "c=sandbox"},
                         {"x-goog-api-key", "sandbox"},       {"proxy-authorization", "Basic sandbox"}};
    for (const auto& [n, v] : upstream_headers(client, prof, p)) {
        EXPECT_EQ(v.find("sandbox"), std::string::npos) << n << ": " << v;
        if (n == "authorization") EXPECT_EQ(v, "Bearer sk-real");
    }
}

TEST(Upstream, TargetJoinAndQueryFilter) {
    std::string err;
    auto oa = *parse_base_url("https://api.openai.com/v1", &err);
    EXPECT_EQ(upstream_target(oa, *find_profile("openai"), "/v1/chat/completions", "key=abc"), "/v1/chat/completions");
    auto an = *parse_base_url("https://api.anthropic.com", &err);
    EXPECT_EQ(upstream_target(an, *find_profile("anthropic"), "/v1/messages", "beta=true&key=zzz"),
              "/v1/messages?beta=true");
    auto gm = *parse_base_url("https://g.example.test/v1beta/openai", &err);
    EXPECT_EQ(upstream_target(gm, *find_profile("openai-compatible"), "/v1/embeddings", ""),
              "/v1beta/openai/embeddings");
}

TEST(Errors, Shapes) {
    EXPECT_EQ(error_json(ApiShape::Anthropic, "not_found_error", "nope"),
              R"({"type":"error","error":{"type":"not_found_error","message":"nope"}})");
    EXPECT_EQ(error_json(ApiShape::OpenAI, "invalid_request_error", "bad \"x\""),
              R"({"error":{"message":"bad \"x\"","type":"invalid_request_error","param":null,"code":null}})");
}

// That the access log carries no secret is shown on real requests:
// GatewayTest.AccessLogNeverCarriesSecretsOrPrompt (a record built by hand proves nothing).
TEST(Log, IsOneJsonObjectWithTheFields) {
    RequestLog r;
    r.conn.cgroup_id = 42;
    r.model_requested = "gpt";
    r.model_used = "m";
    r.status = 200;
    auto j = request_log_json(r);
    EXPECT_EQ(j.front(), '{');
    EXPECT_EQ(j.back(), '}');
    EXPECT_NE(j.find("\"cgroup_id\":42"), std::string::npos) << j;
    EXPECT_NE(j.find("\"model_used\":\"m\""), std::string::npos) << j;
    EXPECT_NE(j.find("\"status\":200"), std::string::npos) << j;
}

TEST(Log, NamesTheInjectedCredentialByHeaderAndKeyOnly) {
    Provider p;
    p.credentials = {{"OPENAI_API_KEY", "sk-value-never-logged"}};
    RequestLog r;
    r.credential = credential_use(*find_profile("openai"), p);
    auto j = request_log_json(r);
    EXPECT_NE(j.find(R"("credential":"injected","credential_header":"authorization","credential_key":"OPENAI_API_KEY")"),
              std::string::npos)
        << j;
    EXPECT_EQ(j.find("sk-value"), std::string::npos) << j;
    r.credential = credential_use(*find_profile("mock"), p);
    j = request_log_json(r);
    EXPECT_NE(j.find(R"("credential":"none")"), std::string::npos) << j;
    EXPECT_EQ(j.find("credential_header"), std::string::npos) << j;
    r.credential.reset();  // refused before an answer: nothing to say
    EXPECT_EQ(request_log_json(r).find("credential"), std::string::npos);
}

std::vector<RequestLog> varied_records() {
    std::string every_byte;
    for (int c = 0; c < 256; ++c) every_byte.push_back(static_cast<char>(c));
    std::vector<RequestLog> out;
    RequestLog a;  // everything empty or zero
    out.push_back(a);
    RequestLog b;
    b.conn.cgroup_id = std::numeric_limits<uint64_t>::max();
    b.conn.pid = std::numeric_limits<uint32_t>::max();
    b.conn.client = "[2001:db8::1]:40000";
    b.method = "POST";
    b.path = "/v1/chat/completions";
    b.route = "default";
    b.provider = "p\"q\\r";
    b.provider_type = "openai";
    b.model_requested = every_byte;                     // control bytes, quote, backslash, DEL, high bytes
    b.model_used = "\xE2\x80\xA8 \xF0\x9F\x98\x80 \xff\xfe";  // U+2028, an emoji, invalid UTF-8: written as is
    b.config_version = 7;
    b.status = INT_MIN;
    b.stream = true;
    b.bytes_in = 1;
    b.bytes_out = std::numeric_limits<uint64_t>::max();
    b.duration_ms = 123.4567;
    b.usage.input_tokens = 0;
    b.usage.output_tokens = 18446744073709551615ull;
    b.credential = CredentialUse{"authorization", "OPENAI_API_KEY"};
    b.error = std::string("line\nbreak\ttab\x01\x1f</script>/");
    out.push_back(b);
    for (double d : {0.0, 0.0004, 0.001, 1.0, 2.5, 1e-3, 99999.9999, 1e12, -3.25, 1e300}) {
        RequestLog r = b;
        r.duration_ms = d;
        r.usage.input_tokens.reset();  // output only
        r.credential = CredentialUse{};  // "none"
        r.status = 200;
        out.push_back(r);
    }
    RequestLog c = b;
    c.usage = {};
    c.credential.reset();
    c.conn.client.clear();
    c.route.clear();
    c.provider_type.clear();
    c.error.clear();
    c.status = -1;
    out.push_back(c);
    RequestLog d = c;
    d.usage.input_tokens = 5;  // input only
    d.credential = CredentialUse{"x-api-key", ""};
    out.push_back(d);
    return out;
}

TEST(Log, BytesAreThoseOfTheRapidjsonWriter) {
    for (const auto& r : varied_records()) {
        const auto want = reference::log_json(r);
        EXPECT_EQ(request_log_json(r), want);
        EXPECT_EQ(request_log_line(r), want);
        std::string out = "stale bytes of an earlier line";
        request_log_json(r, out);
        EXPECT_EQ(out, want);
        rapidjson::Document doc;
        doc.Parse(want.data(), want.size());
        EXPECT_FALSE(doc.HasParseError()) << want;
    }
}

// The duration goes out in a fixed format where that is rapidjson's dtoa
// output (whole microseconds under 1e8), through dtoa elsewhere: the bytes
// are the Writer's at every microsecond below 0.3 s, around the switch, and
// at random durations up to days.
TEST(Log, DurationBytesAreThoseOfTheRapidjsonWriter) {
    RequestLog r;
    r.status = 200;
    std::vector<double> ds;
    for (int m = 0; m < 300000; ++m) ds.push_back(m / 1000.0);
    for (double d : {99999.998, 99999.999, 99999.9995, 100000.0, 100000.001, 100000.5, 1e7, -0.001, -1.0, 1e15, 1e17})
        ds.push_back(d);
    std::mt19937_64 rng(11);
    for (int i = 0; i < 100000; ++i) ds.push_back(std::uniform_real_distribution<double>(0, 3e5)(rng));
    for (int i = 0; i < 20000; ++i) ds.push_back(static_cast<double>(rng() % 100000000) / 1000.0);
    for (double d : ds) {
        r.duration_ms = d;
        ASSERT_EQ(request_log_line(r), reference::log_json(r)) << d;
    }
}

// The per-thread buffer is reused: a short record after a long one carries
// nothing of the long one (no field, no trailing bytes).
TEST(Log, ReusedBufferDoesNotLeakTheLastRecordsFields) {
    RequestLog long_one;
    long_one.conn.client = "203.0.113.7:5555";
    long_one.route = "secret-route-of-sandbox-a";
    long_one.provider_type = "anthropic";
    long_one.model_requested = std::string(3000, 'L');
    long_one.usage.input_tokens = 11;
    long_one.usage.output_tokens = 22;
    long_one.credential = CredentialUse{"x-api-key", "ANTHROPIC_API_KEY"};
    long_one.error = "provider said no: " + std::string(500, 'E');
    const std::string long_line(request_log_line(long_one));
    EXPECT_EQ(long_line, reference::log_json(long_one));

    RequestLog short_one;
    short_one.conn.cgroup_id = 2;
    short_one.status = 200;
    const std::string_view short_line = request_log_line(short_one);
    EXPECT_EQ(short_line, reference::log_json(short_one));
    for (const char* leak : {"203.0.113.7", "secret-route", "anthropic", "LLL", "usage", "credential", "EEE", "error"})
        EXPECT_EQ(short_line.find(leak), std::string_view::npos) << leak << " leaked into " << short_line;
    EXPECT_LT(short_line.size(), 300u);
}

// upstream_headers as it was before the provider's part moved into the
// snapshot and the list became a callback: the same headers, in the same order.
HeaderList reference_upstream_headers(const HeaderList& client, const Profile& profile, const Provider& provider) {
    static constexpr std::string_view hop[] = {"connection", "keep-alive", "proxy-connection", "te",
                                               "trailer",    "transfer-encoding", "upgrade"};
    auto conn = connection_tokens(client);
    const auto& common = common_allowed_headers();
    HeaderList out;
    for (const auto& [n, v] : client) {
        if (std::find(std::begin(hop), std::end(hop), n) != std::end(hop) || conn.count(n) ||
            is_credential_header(n) || n == "openai-organization" || n == "openai-project")
            continue;
        if (std::find(common.begin(), common.end(), n) != common.end() ||
            std::find(profile.extra_headers.begin(), profile.extra_headers.end(), n) != profile.extra_headers.end())
            out.emplace_back(n, v);
    }
    if (auto cred = pick_credential(profile, provider)) {
        if (profile.auth == AuthStyle::Bearer)
            out.emplace_back("authorization", "Bearer " + *cred);
        else
            out.emplace_back(std::string(profile.auth_header), *cred);
    }
    if (auto it = provider.credentials.find("OPENAI_ORG_ID"); it != provider.credentials.end())
        out.emplace_back("openai-organization", it->second);
    if (auto it = provider.credentials.find("OPENAI_PROJECT_ID"); it != provider.credentials.end())
        out.emplace_back("openai-project", it->second);
    auto has = [&](std::string_view n) {
        return std::any_of(out.begin(), out.end(), [&](const auto& h) { return h.first == n; });
    };
    for (const auto& [n, v] : profile.default_headers)
        if (!has(n)) out.emplace_back(std::string(n), std::string(v));
    if (!has("content-type")) out.emplace_back("content-type", "application/json");
    out.emplace_back("accept-encoding", "identity");
    return out;
}

TEST(UpstreamHeaders, SameHeadersInTheSameOrderAsBefore) {
    const std::vector<HeaderList> clients = {
        {},
        {{"content-type", "application/json; charset=utf-8"}, {"accept", "*/*"}, {"user-agent", "sdk/1"}},
        {{"anthropic-version", "2023-01-01"}, {"anthropic-beta", "tools-2024-04-04"}, {"x-api-key", "sandbox"}},
        {{"connection", "keep-alive, User-Agent"}, {"user-agent", "dropped"}, {"keep-alive", "5"},
         {"authorization", "Bearer sandbox"}, {"openai-organization", "org-sandbox"}, {"cookie", "c"}},
        {{"content-type", "a"}, {"content-type", "b"}, {"te", "trailers"}, {"openai-beta", "assistants=v2"}},
    };
    const std::vector<Provider> providers = {
        {"p", "", "https://x", "", {}},
        {"p", "", "https://x", "", {{"OPENAI_API_KEY", "sk-1"}}},
        {"p", "", "https://x", "", {{"ANTHROPIC_API_KEY", "ak"}, {"OPENAI_ORG_ID", "org"}, {"OPENAI_PROJECT_ID", "pr"}}},
        {"p", "", "https://x", "", {{"A", "1"}, {"B", "2"}}},
    };
    for (const char* type : {"openai", "anthropic", "nvidia", "openai-compatible", "mock"}) {
        const Profile& profile = *find_profile(type);
        for (const auto& provider : providers)
            for (const auto& client : clients) {
                const auto want = reference_upstream_headers(client, profile, provider);
                EXPECT_EQ(upstream_headers(client, profile, provider), want) << type;
                HeaderList got;
                each_upstream_header(client, profile, provider_headers(profile, provider),
                                     [&](std::string_view n, std::string_view v) { got.emplace_back(n, v); });
                EXPECT_EQ(got, want) << type;
            }
    }
}

// The gateway keeps only the client headers client_header_matters() names:
// the provider call must come out the same as with all of them.
TEST(UpstreamHeaders, KeepingOnlyTheHeadersThatMatterChangesNothing) {
    const HeaderList all = {
        {"host", "inference.local"}, {"content-length", "12"}, {"connection", "keep-alive, accept, x-custom"},
        {"accept", "*/*"}, {"user-agent", "sdk"}, {"x-custom", "1"}, {"anthropic-version", "2023-06-01"},
        {"anthropic-beta", "mcp-client-2025-04-04"}, {"openai-beta", "assistants=v2"}, {"authorization", "Bearer x"},
        {"x-api-key", "k"}, {"openai-organization", "o"}, {"te", "trailers"}, {"content-type", "application/json"},
        {"x-stainless-package-version", "1.0"}, {"anthropic-beta", "web-fetch-2025-09-10"}};
    const Provider provider{"p", "", "https://x", "", {{"OPENAI_API_KEY", "sk"}, {"ANTHROPIC_API_KEY", "ak"}}};
    for (const char* type : {"openai", "anthropic", "nvidia", "openai-compatible", "mock"}) {
        const Profile& profile = *find_profile(type);
        HeaderList kept;
        for (const auto& h : all)
            if (client_header_matters(h.first, profile)) kept.push_back(h);
        EXPECT_LT(kept.size(), all.size()) << type;
        EXPECT_EQ(upstream_headers(kept, profile, provider), upstream_headers(all, profile, provider)) << type;
        auto a = find_provider_fetch(R"({"messages":[]})", kept), b = find_provider_fetch(R"({"messages":[]})", all);
        ASSERT_EQ(a.has_value(), b.has_value()) << type;
        ASSERT_TRUE(a) << type;
        EXPECT_EQ(a->where, b->where) << type;
    }
}

TEST(UpstreamTarget, JoinsBaseAndPathAndKeepsOnlyTheProfilesQuery) {
    BaseUrl base;
    base.path = "/openai/v1";
    Profile p = *find_profile("openai");
    EXPECT_EQ(upstream_target(base, p, "/v1/chat/completions", ""), "/openai/v1/chat/completions");
    p.query_params = {"api-version", "x y"};
    EXPECT_EQ(upstream_target(base, p, "/v1/chat/completions", "a=1&api-version=2024&b&x%20y=3&api-version"),
              "/openai/v1/chat/completions?api-version=2024&x%20y=3&api-version");
    EXPECT_EQ(upstream_target(base, p, "/v1/chat/completions", "a=1&%zz=2"), "/openai/v1/chat/completions");
    p.base_includes_version = false;
    base.path = "";
    EXPECT_EQ(upstream_target(base, p, "/v1/messages", ""), "/v1/messages");
}

TEST(Mock, AnswersInEachShape) {
    auto m = mock_reply(Endpoint::Messages, R"({"model":"x"})", "x", true);
    ASSERT_TRUE(m.stream);
    EXPECT_NE(m.pieces.front().find("event: message_start"), std::string::npos);
    EXPECT_NE(m.pieces.back().find("message_stop"), std::string::npos);
    m = mock_reply(Endpoint::ChatCompletions, R"({"model":"x","stream":true,"stream_options":{"include_usage":true}})",
                   "x", true);
    EXPECT_EQ(m.pieces.back(), "data: [DONE]\n\n");
    EXPECT_NE(m.pieces[m.pieces.size() - 2].find("\"usage\""), std::string::npos);
    m = mock_reply(Endpoint::Embeddings, R"({"model":"x","input":["a","b"]})", "x", false);
    EXPECT_NE(m.pieces[0].find("\"index\":1"), std::string::npos);
}

// The sandbox's way around the rewrite: spell the key so that a byte-level
// match misses it but the provider's JSON parser reads "model" (escapes), or
// send it twice hoping the provider keeps the last one. Escaped, the key is
// still the model and is rewritten; twice (however spelled), the body is refused.
TEST(Rewrite, EscapedModelKeysCannotSmuggleAModel) {
    auto r = rewrite_model(R"({"\u006dodel":"gpt-expensive","x":1})", "m");
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.model_requested, "gpt-expensive");
    EXPECT_EQ(r.body.find("gpt-expensive"), std::string::npos) << r.body;
    EXPECT_NE(r.body.find("\"m\""), std::string::npos) << r.body;
    for (const char* body : {R"({"model":"a","\u006dodel":"gpt-expensive"})",
                             R"({"\u006d\u006f\u0064\u0065\u006c":"gpt-expensive","model":"a"})",
                             R"({"mod\u0065l":"a","x":{},"m\u006fdel":"gpt-expensive"})"}) {
        r = rewrite_model(body, "m");
        EXPECT_FALSE(r.ok) << body;
        EXPECT_NE(r.error.find("repeats the top-level key"), std::string::npos) << body << " -> " << r.error;
    }
}

}  // namespace
}  // namespace redir::terminator
