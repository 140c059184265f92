#include <gtest/gtest.h>

#include "terminator/mock.hpp"
#include "terminator/request.hpp"

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

}  // namespace
}  // namespace redir::terminator
