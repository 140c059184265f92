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

MockReply mock_reply(Endpoint ep, const std::string& body, const std::string& model, bool stream) {
    rapidjson::Document req;
    req.Parse(body.data(), body.size());
    const uint64_t prompt_tokens = body.size() / 4 + 1;
    const std::string text = mock_text(model);
    const auto parts = words(text);
    const uint64_t completion_tokens = parts.size();
    const int64_t now = static_cast<int64_t>(std::time(nullptr));
    bool include_usage = false;
    if (req.IsObject()) {
        auto so = req.FindMember("stream_options");
        if (so != req.MemberEnd() && so->value.IsObject()) {
            auto iu = so->value.FindMember("include_usage");
            include_usage = iu != so->value.MemberEnd() && iu->value.IsBool() && iu->value.GetBool();
        }
    }

    MockReply r;
    r.stream = stream && ep != Endpoint::Embeddings;
    r.content_type = r.stream ? "text/event-stream" : "application/json";

    auto openai_usage = [&](Writer& w) {
        key(w, "usage");
        w.StartObject();
        key(w, "prompt_tokens");
        w.Uint64(prompt_tokens);
        key(w, "completion_tokens");
        w.Uint64(completion_tokens);
        key(w, "total_tokens");
        w.Uint64(prompt_tokens + completion_tokens);
        w.EndObject();
    };
    auto io_usage = [&](Writer& w, uint64_t in, uint64_t out, bool total) {
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
    };

    switch (ep) {
        case Endpoint::ChatCompletions:
        case Endpoint::Completions: {
            const bool chat = ep == Endpoint::ChatCompletions;
            const std::string id = next_id(chat ? "chatcmpl-" : "cmpl-");
            auto head = [&](Writer& w, const char* object) {
                key(w, "id");
                put(w, id);
                key(w, "object");
                put(w, object);
                key(w, "created");
                w.Int64(now);
                key(w, "model");
                put(w, model);
            };
            if (!r.stream) {
                r.pieces.push_back(build([&](Writer& w) {
                    w.StartObject();
                    head(w, chat ? "chat.completion" : "text_completion");
                    key(w, "choices");
                    w.StartArray();
                    w.StartObject();
                    key(w, "index");
                    w.Int(0);
                    if (chat) {
                        key(w, "message");
                        w.StartObject();
                        key(w, "role");
                        put(w, "assistant");
                        key(w, "content");
                        put(w, text);
                        w.EndObject();
                    } else {
                        key(w, "text");
                        put(w, text);
                    }
                    key(w, "finish_reason");
                    put(w, "stop");
                    w.EndObject();
                    w.EndArray();
                    openai_usage(w);
                    w.EndObject();
                }));
                break;
            }
            for (size_t i = 0; i <= parts.size(); ++i) {
                const bool last = i == parts.size();
                r.pieces.push_back(sse(build([&](Writer& w) {
                    w.StartObject();
                    head(w, chat ? "chat.completion.chunk" : "text_completion");
                    key(w, "choices");
                    w.StartArray();
                    w.StartObject();
                    key(w, "index");
                    w.Int(0);
                    if (chat) {
                        key(w, "delta");
                        w.StartObject();
                        if (i == 0) {
                            key(w, "role");
                            put(w, "assistant");
                        }
                        if (!last) {
                            key(w, "content");
                            put(w, parts[i]);
                        }
                        w.EndObject();
                    } else {
                        key(w, "text");
                        put(w, last ? "" : parts[i]);
                    }
                    key(w, "finish_reason");
                    if (last)
                        put(w, "stop");
                    else
                        w.Null();
                    w.EndObject();
                    w.EndArray();
                    w.EndObject();
                })));
            }
            if (include_usage) {
                r.pieces.push_back(sse(build([&](Writer& w) {
                    w.StartObject();
                    head(w, chat ? "chat.completion.chunk" : "text_completion");
                    key(w, "choices");
                    w.StartArray();
                    w.EndArray();
                    openai_usage(w);
                    w.EndObject();
                })));
            }
            r.pieces.push_back(sse("[DONE]"));
            break;
        }
        case Endpoint::Embeddings: {
            size_t n = 1;
            if (req.IsObject()) {
                auto in = req.FindMember("input");
                if (in != req.MemberEnd() && in->value.IsArray() && !in->value.Empty()) {
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
                put(w, model);
                key(w, "usage");
                w.StartObject();
                key(w, "prompt_tokens");
                w.Uint64(prompt_tokens);
                key(w, "total_tokens");
                w.Uint64(prompt_tokens);
                w.EndObject();
                w.EndObject();
            }));
            break;
        }
        case Endpoint::Responses: {
            const std::string id = next_id("resp_");
            const std::string msg_id = next_id("msg_");
            auto response = [&](Writer& w, bool done) {
                w.StartObject();
                key(w, "id");
                put(w, id);
                key(w, "object");
                put(w, "response");
                key(w, "created_at");
                w.Int64(now);
                key(w, "status");
                put(w, done ? "completed" : "in_progress");
                key(w, "model");
                put(w, model);
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
                    w.StartObject();
                    key(w, "type");
                    put(w, "output_text");
                    key(w, "text");
                    put(w, text);
                    key(w, "annotations");
                    w.StartArray();
                    w.EndArray();
                    w.EndObject();
                    w.EndArray();
                    w.EndObject();
                }
                w.EndArray();
                if (done) io_usage(w, prompt_tokens, completion_tokens, true);
                w.EndObject();
            };
            if (!r.stream) {
                r.pieces.push_back(build([&](Writer& w) { response(w, true); }));
                break;
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
            for (const auto& p : parts) {
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
            break;
        }
        case Endpoint::Messages: {
            const std::string id = next_id("msg_");
            auto message = [&](Writer& w, bool done) {
                w.StartObject();
                key(w, "id");
                put(w, id);
                key(w, "type");
                put(w, "message");
                key(w, "role");
                put(w, "assistant");
                key(w, "model");
                put(w, model);
                key(w, "content");
                w.StartArray();
                if (done) {
                    w.StartObject();
                    key(w, "type");
                    put(w, "text");
                    key(w, "text");
                    put(w, text);
                    w.EndObject();
                }
                w.EndArray();
                key(w, "stop_reason");
                if (done)
                    put(w, "end_turn");
                else
                    w.Null();
                key(w, "stop_sequence");
                w.Null();
                io_usage(w, prompt_tokens, done ? completion_tokens : 1, false);
                w.EndObject();
            };
            if (!r.stream) {
                r.pieces.push_back(build([&](Writer& w) { message(w, true); }));
                break;
            }
            r.pieces.push_back(sse("message_start", build([&](Writer& w) {
                w.StartObject();
                key(w, "type");
                put(w, "message_start");
                key(w, "message");
                message(w, false);
                w.EndObject();
            })));
            r.pieces.push_back(sse("content_block_start",
                                   R"({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}})"));
            r.pieces.push_back(sse("ping", R"({"type":"ping"})"));
            for (const auto& p : parts) {
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
                w.Uint64(completion_tokens);
                w.EndObject();
                w.EndObject();
            })));
            r.pieces.push_back(sse("message_stop", R"({"type":"message_stop"})"));
            break;
        }
        case Endpoint::Models:
        case Endpoint::ModelById:
            r.status = 404;
            break;
    }
    return r;
}

}  // namespace redir::terminator
