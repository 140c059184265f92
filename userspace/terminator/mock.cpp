#include "terminator/mock.hpp"

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <atomic>
#include <ctime>
#include <functional>

namespace redir::terminator {

namespace {

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

void put(Writer& w, std::string_view s) { w.String(s.data(), static_cast<rapidjson::SizeType>(s.size())); }
void key(Writer& w, std::string_view s) { w.Key(s.data(), static_cast<rapidjson::SizeType>(s.size())); }

std::string build(const std::function<void(Writer&)>& f) {
    rapidjson::StringBuffer sb;
    Writer w(sb);
    f(w);
    return std::string(sb.GetString(), sb.GetSize());
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
    int64_t now;
};

void openai_usage(Writer& w, const MockCall& c) {
    const uint64_t completion = c.parts.size();
    key(w, "usage");
    w.StartObject();
    key(w, "prompt_tokens");
    w.Uint64(c.prompt_tokens);
    key(w, "completion_tokens");
    w.Uint64(completion);
    key(w, "total_tokens");
    w.Uint64(c.prompt_tokens + completion);
    w.EndObject();
}

void io_usage(Writer& w, uint64_t in, uint64_t out, bool total) {
    key(w, "usage");
    w.StartObject();
    key(w, "input_tokens");
    w.Uint64(in);
    key(w, "output_tokens");
    w.Uint64(out);
    if (total) {
        key(w, "total_tokens");
        w.Uint64(in + out);
    }
    w.EndObject();
}

// One text item of a message's content; the Responses API adds annotations.
void text_block(Writer& w, std::string_view type, std::string_view text, bool annotations) {
    w.StartObject();
    key(w, "type");
    put(w, type);
    key(w, "text");
    put(w, text);
    if (annotations) {
        key(w, "annotations");
        w.StartArray();
        w.EndArray();
    }
    w.EndObject();
}

// "choices" with one entry: CONTENT writes the message, delta or text;
// FINISH "" is a null finish_reason.
void one_choice(Writer& w, const std::function<void(Writer&)>& content, std::string_view finish) {
    key(w, "choices");
    w.StartArray();
    w.StartObject();
    key(w, "index");
    w.Int(0);
    content(w);
    key(w, "finish_reason");
    if (finish.empty())
        w.Null();
    else
        put(w, finish);
    w.EndObject();
    w.EndArray();
}

// POST /v1/chat/completions and /v1/completions.
void openai_completion(const MockCall& c, MockReply& r) {
    const bool chat = c.ep == Endpoint::ChatCompletions;
    const std::string id = next_id(chat ? "chatcmpl-" : "cmpl-");
    auto head = [&](Writer& w, const char* object) {
        key(w, "id");
        put(w, id);
        key(w, "object");
        put(w, object);
        key(w, "created");
        w.Int64(c.now);
        key(w, "model");
        put(w, c.model);
    };
    if (!c.stream) {
        r.pieces.push_back(build([&](Writer& w) {
            w.StartObject();
            head(w, chat ? "chat.completion" : "text_completion");
            one_choice(
                w,
                [&](Writer& w) {
                    if (!chat) {
                        key(w, "text");
                        put(w, c.text);
                        return;
                    }
                    key(w, "message");
                    w.StartObject();
                    key(w, "role");
                    put(w, "assistant");
                    key(w, "content");
                    put(w, c.text);
                    w.EndObject();
                },
                "stop");
            openai_usage(w, c);
            w.EndObject();
        }));
        return;
    }
    const char* chunk = chat ? "chat.completion.chunk" : "text_completion";
    for (size_t i = 0; i <= c.parts.size(); ++i) {
        const bool last = i == c.parts.size();
        r.pieces.push_back(sse(build([&](Writer& w) {
            w.StartObject();
            head(w, chunk);
            one_choice(
                w,
                [&](Writer& w) {
                    if (!chat) {
                        key(w, "text");
                        put(w, last ? "" : c.parts[i]);
                        return;
                    }
                    key(w, "delta");
                    w.StartObject();
                    if (i == 0) {
                        key(w, "role");
                        put(w, "assistant");
                    }
                    if (!last) {
                        key(w, "content");
                        put(w, c.parts[i]);
                    }
                    w.EndObject();
                },
                last ? "stop" : "");
            w.EndObject();
        })));
    }
    if (c.include_usage) {
        r.pieces.push_back(sse(build([&](Writer& w) {
            w.StartObject();
            head(w, chunk);
            key(w, "choices");
            w.StartArray();
            w.EndArray();
            openai_usage(w, c);
            w.EndObject();
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
    r.pieces.push_back(build([&](Writer& w) {
        w.StartObject();
        key(w, "object");
        put(w, "list");
        key(w, "data");
        w.StartArray();
        for (size_t i = 0; i < n; ++i) {
            w.StartObject();
            key(w, "object");
            put(w, "embedding");
            key(w, "index");
            w.Uint64(i);
            key(w, "embedding");
            w.StartArray();
            for (int k = 0; k < 8; ++k) w.Double(k == static_cast<int>(i % 8) ? 1.0 : 0.0);
            w.EndArray();
            w.EndObject();
        }
        w.EndArray();
        key(w, "model");
        put(w, c.model);
        key(w, "usage");
        w.StartObject();
        key(w, "prompt_tokens");
        w.Uint64(c.prompt_tokens);
        key(w, "total_tokens");
        w.Uint64(c.prompt_tokens);
        w.EndObject();
        w.EndObject();
    }));
}

// POST /v1/responses.
void openai_responses(const MockCall& c, MockReply& r) {
    const std::string id = next_id("resp_");
    const std::string msg_id = next_id("msg_");
    auto response = [&](Writer& w, bool done) {
        w.StartObject();
        key(w, "id");
        put(w, id);
        key(w, "object");
        put(w, "response");
        key(w, "created_at");
        w.Int64(c.now);
        key(w, "status");
        put(w, done ? "completed" : "in_progress");
        key(w, "model");
        put(w, c.model);
        key(w, "output");
        w.StartArray();
        if (done) {
            w.StartObject();
            key(w, "type");
            put(w, "message");
            key(w, "id");
            put(w, msg_id);
            key(w, "status");
            put(w, "completed");
            key(w, "role");
            put(w, "assistant");
            key(w, "content");
            w.StartArray();
            text_block(w, "output_text", c.text, true);
            w.EndArray();
            w.EndObject();
        }
        w.EndArray();
        if (done) io_usage(w, c.prompt_tokens, c.parts.size(), true);
        w.EndObject();
    };
    if (!c.stream) {
        r.pieces.push_back(build([&](Writer& w) { response(w, true); }));
        return;
    }
    int seq = 0;
    auto event = [&](const char* type, const std::function<void(Writer&)>& fields) {
        r.pieces.push_back(sse(type, build([&](Writer& w) {
            w.StartObject();
            key(w, "type");
            put(w, type);
            key(w, "sequence_number");
            w.Int(seq++);
            fields(w);
            w.EndObject();
        })));
    };
    event("response.created", [&](Writer& w) {
        key(w, "response");
        response(w, false);
    });
    for (const auto& p : c.parts) {
        event("response.output_text.delta", [&](Writer& w) {
            key(w, "item_id");
            put(w, msg_id);
            key(w, "output_index");
            w.Int(0);
            key(w, "content_index");
            w.Int(0);
            key(w, "delta");
            put(w, p);
        });
    }
    event("response.completed", [&](Writer& w) {
        key(w, "response");
        response(w, true);
    });
}

// POST /v1/messages (Anthropic).
void anthropic_messages(const MockCall& c, MockReply& r) {
    const std::string id = next_id("msg_");
    const uint64_t completion = c.parts.size();
    auto message = [&](Writer& w, bool done) {
        w.StartObject();
        key(w, "id");
        put(w, id);
        key(w, "type");
        put(w, "message");
        key(w, "role");
        put(w, "assistant");
        key(w, "model");
        put(w, c.model);
        key(w, "content");
        w.StartArray();
        if (done) text_block(w, "text", c.text, false);
        w.EndArray();
        key(w, "stop_reason");
        if (done)
            put(w, "end_turn");
        else
            w.Null();
        key(w, "stop_sequence");
        w.Null();
        io_usage(w, c.prompt_tokens, done ? completion : 1, false);
        w.EndObject();
    };
    if (!c.stream) {
        r.pieces.push_back(build([&](Writer& w) { message(w, true); }));
        return;
    }
    r.pieces.push_back(sse("message_start", build([&](Writer& w) {
        w.StartObject();
        key(w, "type");
        put(w, "message_start");
        key(w, "message");
        message(w, false);
        w.EndObject();
    })));
    r.pieces.push_back(
        sse("content_block_start", R"({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}})"));
    r.pieces.push_back(sse("ping", R"({"type":"ping"})"));
    for (const auto& p : c.parts) {
        r.pieces.push_back(sse("content_block_delta", build([&](Writer& w) {
            w.StartObject();
            key(w, "type");
            put(w, "content_block_delta");
            key(w, "index");
            w.Int(0);
            key(w, "delta");
            w.StartObject();
            key(w, "type");
            put(w, "text_delta");
            key(w, "text");
            put(w, p);
            w.EndObject();
            w.EndObject();
        })));
    }
    r.pieces.push_back(sse("content_block_stop", R"({"type":"content_block_stop","index":0})"));
    r.pieces.push_back(sse("message_delta", build([&](Writer& w) {
        w.StartObject();
        key(w, "type");
        put(w, "message_delta");
        key(w, "delta");
        w.StartObject();
        key(w, "stop_reason");
        put(w, "end_turn");
        key(w, "stop_sequence");
        w.Null();
        w.EndObject();
        key(w, "usage");
        w.StartObject();
        key(w, "output_tokens");
        w.Uint64(completion);
        w.EndObject();
        w.EndObject();
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
                        static_cast<int64_t>(std::time(nullptr))};
    MockReply r;
    r.stream = streamed;
    r.content_type = r.stream ? "text/event-stream" : "application/json";
    for (const auto& a : kAnswers)
        if (a.ep == ep) a.build(call, r);
    return r;
}

}  // namespace redir::terminator
