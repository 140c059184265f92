#include "terminator/mock.hpp"

#include <rapidjson/document.h>

#include <atomic>
#include <ctime>
#include <functional>

#include "common/json_out.hpp"

namespace redir::terminator {

namespace {

// F writes one JSON document; its text.
std::string build(const std::function<void(JsonOut&)>& f) {
    JsonOut j;
    f(j);
    return j.take();
}

std::string next_id(const char* prefix) {
    static std::atomic<uint64_t> n{0};
    return std::string(prefix) + "mock" + std::to_string(++n);
}

std::vector<std::string> words(const std::string& text) {
    std::vector<std::string> out;
    size_t i = 0;
    while (i < text.size()) {
        size_t j = text.find(' ', i);
        if (j == std::string::npos) j = text.size() - 1;
        out.push_back(text.substr(i, j - i + 1));
        i = j + 1;
    }
    return out;
}

std::string sse(std::string_view data) { return "data: " + std::string(data) + "\n\n"; }
std::string sse(std::string_view event, std::string_view data) {
    return "event: " + std::string(event) + "\ndata: " + std::string(data) + "\n\n";
}

}  // namespace

std::string mock_text(const std::string& model) { return "This is a mock response from redir for model " + model + "."; }

namespace {

// What every mock answer is built from.
struct MockCall {
    Endpoint ep;
    const rapidjson::Document& req;
    const std::string& model;
    bool stream;          // the answer is an SSE stream
    bool include_usage;   // stream_options.include_usage
    uint64_t prompt_tokens;
    std::string text;
    std::vector<std::string> parts;  // TEXT word by word: one streamed delta each
    uint64_t now;
};

void openai_usage(JsonOut& j, const MockCall& c) {
    const uint64_t completion = c.parts.size();
    j.begin_object("usage")
        .num("prompt_tokens", c.prompt_tokens)
        .num("completion_tokens", completion)
        .num("total_tokens", c.prompt_tokens + completion)
        .end();
}

void io_usage(JsonOut& j, uint64_t in, uint64_t out, bool total) {
    j.begin_object("usage").num("input_tokens", in).num("output_tokens", out);
    if (total) j.num("total_tokens", in + out);
    j.end();
}

// One text item of a message's content; the Responses API adds annotations.
void text_block(JsonOut& j, std::string_view type, std::string_view text, bool annotations) {
    j.begin().str("type", type).str("text", text);
    if (annotations) j.begin_array("annotations").end_array();
    j.end();
}

// "choices" with one entry: CONTENT writes the message, delta or text;
// FINISH "" is a null finish_reason.
void one_choice(JsonOut& j, const std::function<void(JsonOut&)>& content, std::string_view finish) {
    j.begin_array("choices").begin().num("index", 0);
    content(j);
    if (finish.empty())
        j.null("finish_reason");
    else
        j.str("finish_reason", finish);
    j.end().end_array();
}

// POST /v1/chat/completions and /v1/completions.
void openai_completion(const MockCall& c, MockReply& r) {
    const bool chat = c.ep == Endpoint::ChatCompletions;
    const std::string id = next_id(chat ? "chatcmpl-" : "cmpl-");
    auto head = [&](JsonOut& j, const char* object) {
        j.str("id", id).str("object", object).num("created", c.now).str("model", c.model);
    };
    if (!c.stream) {
        r.pieces.push_back(build([&](JsonOut& j) {
            j.begin();
            head(j, chat ? "chat.completion" : "text_completion");
            one_choice(
                j,
                [&](JsonOut& j) {
                    if (chat)
                        j.begin_object("message").str("role", "assistant").str("content", c.text).end();
                    else
                        j.str("text", c.text);
                },
                "stop");
            openai_usage(j, c);
            j.end();
        }));
        return;
    }
    const char* chunk = chat ? "chat.completion.chunk" : "text_completion";
    for (size_t i = 0; i <= c.parts.size(); ++i) {
        const bool last = i == c.parts.size();
        r.pieces.push_back(sse(build([&](JsonOut& j) {
            j.begin();
            head(j, chunk);
            one_choice(
                j,
                [&](JsonOut& j) {
                    if (!chat) {
                        j.str("text", last ? "" : c.parts[i]);
                        return;
                    }
                    j.begin_object("delta");
                    if (i == 0) j.str("role", "assistant");
                    if (!last) j.str("content", c.parts[i]);
                    j.end();
                },
                last ? "stop" : "");
            j.end();
        })));
    }
    if (c.include_usage) {
        r.pieces.push_back(sse(build([&](JsonOut& j) {
            j.begin();
            head(j, chunk);
            j.begin_array("choices").end_array();
            openai_usage(j, c);
            j.end();
        })));
    }
    r.pieces.push_back(sse("[DONE]"));
}

// POST /v1/embeddings (never streamed).
void openai_embeddings(const MockCall& c, MockReply& r) {
    size_t n = 1;
    if (c.req.IsObject()) {
        auto in = c.req.FindMember("input");
        if (in != c.req.MemberEnd() && in->value.IsArray() && !in->value.Empty()) {
            // An array of token ids is one input; an array of strings is many.
            n = in->value[0].IsNumber() ? 1 : in->value.Size();
        }
    }
    r.pieces.push_back(build([&](JsonOut& j) {
        j.begin().str("object", "list").begin_array("data");
        for (size_t i = 0; i < n; ++i) {
            j.begin().str("object", "embedding").num("index", i).begin_array("embedding");
            for (size_t k = 0; k < 8; ++k) j.real(k == i % 8 ? 1.0 : 0.0);
            j.end_array().end();
        }
        j.end_array().str("model", c.model);
        j.begin_object("usage").num("prompt_tokens", c.prompt_tokens).num("total_tokens", c.prompt_tokens).end();
        j.end();
    }));
}

// POST /v1/responses.
void openai_responses(const MockCall& c, MockReply& r) {
    const std::string id = next_id("resp_");
    const std::string msg_id = next_id("msg_");
    auto response = [&](JsonOut& j, bool done) {
        j.begin()
            .str("id", id)
            .str("object", "response")
            .num("created_at", c.now)
            .str("status", done ? "completed" : "in_progress")
            .str("model", c.model)
            .begin_array("output");
        if (done) {
            j.begin()
                .str("type", "message")
                .str("id", msg_id)
                .str("status", "completed")
                .str("role", "assistant")
                .begin_array("content");
            text_block(j, "output_text", c.text, true);
            j.end_array().end();
        }
        j.end_array();
        if (done) io_usage(j, c.prompt_tokens, c.parts.size(), true);
        j.end();
    };
    if (!c.stream) {
        r.pieces.push_back(build([&](JsonOut& j) { response(j, true); }));
        return;
    }
    uint64_t seq = 0;
    auto event = [&](const char* type, const std::function<void(JsonOut&)>& fields) {
        r.pieces.push_back(sse(type, build([&](JsonOut& j) {
            j.begin().str("type", type).num("sequence_number", seq++);
            fields(j);
            j.end();
        })));
    };
    event("response.created", [&](JsonOut& j) {
        j.key("response");
        response(j, false);
    });
    for (const auto& p : c.parts) {
        event("response.output_text.delta", [&](JsonOut& j) {
            j.str("item_id", msg_id).num("output_index", 0).num("content_index", 0).str("delta", p);
        });
    }
    event("response.completed", [&](JsonOut& j) {
        j.key("response");
        response(j, true);
    });
}

// POST /v1/messages (Anthropic).
void anthropic_messages(const MockCall& c, MockReply& r) {
    const std::string id = next_id("msg_");
    const uint64_t completion = c.parts.size();
    auto message = [&](JsonOut& j, bool done) {
        j.begin()
            .str("id", id)
            .str("type", "message")
            .str("role", "assistant")
            .str("model", c.model)
            .begin_array("content");
        if (done) text_block(j, "text", c.text, false);
        j.end_array();
        if (done)
            j.str("stop_reason", "end_turn");
        else
            j.null("stop_reason");
        j.null("stop_sequence");
        io_usage(j, c.prompt_tokens, done ? completion : 1, false);
        j.end();
    };
    if (!c.stream) {
        r.pieces.push_back(build([&](JsonOut& j) { message(j, true); }));
        return;
    }
    r.pieces.push_back(sse("message_start", build([&](JsonOut& j) {
        j.begin().str("type", "message_start").key("message");
        message(j, false);
        j.end();
    })));
    r.pieces.push_back(
        sse("content_block_start", R"({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}})"));
    r.pieces.push_back(sse("ping", R"({"type":"ping"})"));
    for (const auto& p : c.parts) {
        r.pieces.push_back(sse("content_block_delta", build([&](JsonOut& j) {
            j.begin()
                .str("type", "content_block_delta")
                .num("index", 0)
                .begin_object("delta")
                .str("type", "text_delta")
                .str("text", p)
                .end()
                .end();
        })));
    }
    r.pieces.push_back(sse("content_block_stop", R"({"type":"content_block_stop","index":0})"));
    r.pieces.push_back(sse("message_delta", build([&](JsonOut& j) {
        j.begin()
            .str("type", "message_delta")
            .begin_object("delta")
            .str("stop_reason", "end_turn")
            .null("stop_sequence")
            .end()
            .begin_object("usage")
            .num("output_tokens", completion)
            .end()
            .end();
    })));
    r.pieces.push_back(sse("message_stop", R"({"type":"message_stop"})"));
}

// GET endpoints are answered by the gateway itself, never here.
void not_served(const MockCall&, MockReply& r) { r.status = 404; }

// The mock's answers, one builder per endpoint (and so per API shape).
struct MockAnswer {
    Endpoint ep;
    void (*build)(const MockCall&, MockReply&);
};
constexpr MockAnswer kAnswers[] = {
    {Endpoint::ChatCompletions, openai_completion}, {Endpoint::Completions, openai_completion},
    {Endpoint::Embeddings, openai_embeddings},      {Endpoint::Responses, openai_responses},
    {Endpoint::Messages, anthropic_messages},       {Endpoint::Models, not_served},
    {Endpoint::ModelById, not_served},
};

bool wants_usage(const rapidjson::Document& req) {
    if (!req.IsObject()) return false;
    auto so = req.FindMember("stream_options");
    if (so == req.MemberEnd() || !so->value.IsObject()) return false;
    auto iu = so->value.FindMember("include_usage");
    return iu != so->value.MemberEnd() && iu->value.IsBool() && iu->value.GetBool();
}

}  // namespace

MockReply mock_reply(Endpoint ep, const std::string& body, const std::string& model, bool stream) {
    rapidjson::Document req;
    req.Parse(body.data(), body.size());
    const bool streamed = stream && ep != Endpoint::Embeddings;
    std::string text = mock_text(model);
    auto parts = words(text);
    const MockCall call{ep,
                        req,
                        model,
                        streamed,
                        wants_usage(req),
                        body.size() / 4 + 1,
                        std::move(text),
                        std::move(parts),
                        static_cast<uint64_t>(std::time(nullptr))};
    MockReply r;
    r.stream = streamed;
    r.content_type = r.stream ? "text/event-stream" : "application/json";
    for (const auto& a : kAnswers)
        if (a.ep == ep) a.build(call, r);
    return r;
}

}  // namespace redir::terminator
