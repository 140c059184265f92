// The terminator's decisions as tables, without sockets: where a request
// header routes (decide_route), whether the configuration serves it
// (decide_service), and how a provider's answer is framed back (plan_response).
#include <gtest/gtest.h>

#include "terminator/request.hpp"

namespace redir::terminator {
namespace {

RequestHead head(std::string_view method, std::string_view target) {
    RequestHead h;
    h.method = method;
    h.target = target;
    h.host_count = 1;
    return h;
}

struct RouteRow {
    const char* method;
    const char* target;
    int status;  // route_status
    std::optional<Endpoint> endpoint;
    ApiShape shape;
};

TEST(RouteTable, MethodAndTargetDecideTheEndpoint) {
    const RouteRow rows[] = {
        {"POST", "/v1/chat/completions", 0, Endpoint::ChatCompletions, ApiShape::OpenAI},
        {"POST", "/v1//chat/completions/", 0, Endpoint::ChatCompletions, ApiShape::OpenAI},
        {"POST", "/v1/x/../completions", 0, Endpoint::Completions, ApiShape::OpenAI},
        {"POST", "/v1/embeddings", 0, Endpoint::Embeddings, ApiShape::OpenAI},
        {"POST", "/v1/responses", 0, Endpoint::Responses, ApiShape::OpenAI},
        {"POST", "/v1/messages", 0, Endpoint::Messages, ApiShape::Anthropic},
        {"POST", "https://inference.local/v1/messages?beta=true", 0, Endpoint::Messages, ApiShape::Anthropic},
        {"GET", "/v1/models", 0, Endpoint::Models, ApiShape::OpenAI},
        {"GET", "/v1/models/meta/llama-3.1", 0, Endpoint::ModelById, ApiShape::OpenAI},
        {"GET", "/v1/chat/completions", 405, Endpoint::ChatCompletions, ApiShape::OpenAI},
        {"POST", "/v1/models", 405, Endpoint::Models, ApiShape::OpenAI},
        {"post", "/v1/chat/completions", 405, Endpoint::ChatCompletions, ApiShape::OpenAI},
        {"GET", "/v1/messages", 405, Endpoint::Messages, ApiShape::Anthropic},
        {"POST", "/v2/chat/completions", 404, std::nullopt, ApiShape::OpenAI},
        {"POST", "/v1/models/%zz", 404, std::nullopt, ApiShape::OpenAI},
        {"POST", "*", 400, std::nullopt, ApiShape::OpenAI},
        {"POST", "ftp://x/v1/chat/completions", 400, std::nullopt, ApiShape::OpenAI},
    };
    for (const auto& r : rows) {
        auto d = decide_route(head(r.method, r.target));
        SCOPED_TRACE(std::string(r.method) + " " + r.target);
        EXPECT_EQ(d.framing_status, 0);
        EXPECT_EQ(d.route_status, r.status);
        if (r.status != 400) EXPECT_EQ(d.endpoint, r.endpoint);
        EXPECT_EQ(d.shape, r.shape);
        EXPECT_EQ(d.message.empty(), r.status == 0);
    }
}

Snapshot configured(const std::string& type, const std::string& model = "served") {
    Snapshot s;
    s.provider = Provider{"p", type, "https://provider.test/v1", "", {}};
    s.inference = InferenceConfig{"p", model, 7};
    return s;
}

struct ServiceRow {
    const char* what;
    Snapshot snap;
    const char* method;
    const char* target;
    int status;
    const char* message_part;  // in the refusal
};

TEST(ServiceTable, ConfigurationDecidesWhetherTheRouteIsServed) {
    Snapshot none;
    Snapshot unknown = configured("no-such-type");
    const ServiceRow rows[] = {
        {"openai chat", configured("openai"), "POST", "/v1/chat/completions", 0, ""},
        {"anthropic messages", configured("anthropic"), "POST", "/v1/messages", 0, ""},
        {"mock responses", configured("mock"), "POST", "/v1/responses", 0, ""},
        {"the served model by id", configured("openai"), "GET", "/v1/models/served", 0, ""},
        {"nothing configured", none, "POST", "/v1/chat/completions", 503, "redirctl inference set"},
        {"unknown type", unknown, "POST", "/v1/chat/completions", 503, "unknown type no-such-type"},
        {"endpoint the provider lacks", configured("anthropic"), "POST", "/v1/embeddings", 400, "does not speak"},
        {"another model by id", configured("openai"), "GET", "/v1/models/other", 404, "model other is not served"},
        {"route refusal wins", configured("openai"), "GET", "/v1/chat/completions", 405, "accepts POST only"},
    };
    for (const auto& r : rows) {
        SCOPED_TRACE(r.what);
        auto d = decide_service(decide_route(head(r.method, r.target)), r.snap);
        EXPECT_EQ(d.status, r.status);
        EXPECT_EQ(d.profile != nullptr, r.status == 0);
        EXPECT_NE(d.message.find(r.message_part), std::string::npos) << d.message;
    }
}

TEST(ServiceTable, AHugeModelIdIsClippedInTheRefusal) {
    std::string target = "/v1/models/" + std::string(5000, 'm');
    auto d = decide_service(decide_route(head("GET", target), 64), configured("openai"), 64);
    EXPECT_EQ(d.status, 404);
    EXPECT_TRUE(d.truncated);
    EXPECT_LT(d.message.size(), 300u);
}

struct PlanRow {
    int status;
    const char* content_type;
    const char* encoding;
    std::optional<std::uint64_t> length;
    bool upstream_chunked;
    bool no_body, chunked, sse, encoded, json_body;
};

TEST(ResponsePlanTable, FramingAndUsageSourceFollowTheProvidersHeader) {
    const PlanRow rows[] = {
        {200, "application/json", "", 120, false, false, false, false, false, true},
        {200, "application/json; charset=utf-8", "identity", 120, false, false, false, false, false, true},
        {200, "application/json", "gzip", 120, false, false, false, false, true, false},
        {200, "text/event-stream", "", std::nullopt, true, false, true, true, false, false},
        {200, "Text/Event-Stream; charset=utf-8", "", std::nullopt, false, false, true, true, false, false},
        {200, "text/event-stream", "br", std::nullopt, true, false, true, true, true, false},
        {200, "application/json", "", 10, true, false, true, false, false, true},  // chunked wins over a length
        {204, "application/json", "", std::nullopt, false, true, false, false, false, true},
        {304, "", "", std::nullopt, false, true, false, false, false, false},
        {500, "text/plain", "", 5, false, false, false, false, false, false},
    };
    for (const auto& r : rows) {
        SCOPED_TRACE(std::to_string(r.status) + " " + r.content_type + " " + r.encoding);
        auto p = plan_response(r.status, r.content_type, r.encoding, r.length, r.upstream_chunked);
        EXPECT_EQ(p.no_body, r.no_body);
        EXPECT_EQ(p.chunked, r.chunked);
        EXPECT_EQ(p.sse, r.sse);
        EXPECT_EQ(p.encoded, r.encoded);
        EXPECT_EQ(p.json_body, r.json_body);
        EXPECT_EQ(p.content_length.has_value(), !r.no_body && !r.chunked);
    }
}

TEST(ProviderWords, CredentialRefusalAndStreamErrorNameNoSecret) {
    Provider p{"corp", "openai", "https://x", "", {{"OPENAI_API_KEY", "sk-secret-1234567890"}}};
    auto m = credential_rejected_message(p);
    EXPECT_NE(m.find("redirctl provider update corp"), std::string::npos);
    EXPECT_EQ(m.find("sk-secret"), std::string::npos);
    auto ev = stream_error_event(ApiShape::Anthropic, "provider broke off");
    EXPECT_EQ(ev.rfind("event: error\ndata: {", 0), 0u) << ev;
    EXPECT_EQ(ev.substr(ev.size() - 2), "\n\n");
    EXPECT_NE(ev.find("\"type\":\"error\""), std::string::npos);
}

}  // namespace
}  // namespace redir::terminator
