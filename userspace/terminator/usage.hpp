#pragma once
// Token usage read from a provider's answer while it is relayed: a bounded,
// allocation-free state machine over a JSON body or an SSE stream, which only
// the provider's own framing can feed (text a sandbox makes the model write
// arrives inside JSON strings, and strings are never read as usage).
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "terminator/profiles.hpp"

namespace redir::terminator {

// Token counts a provider reported for one request; nullopt: it reported none.
// Input is the prompt as the provider billed it: OpenAI prompt_tokens /
// input_tokens (cached tokens included), Anthropic input_tokens plus
// cache_creation_input_tokens and cache_read_input_tokens.
struct Usage {
    std::optional<std::uint64_t> input_tokens;
    std::optional<std::uint64_t> output_tokens;
    bool known() const { return input_tokens.has_value() || output_tokens.has_value(); }
    // Input plus output, with an unknown side as 0.
    std::uint64_t total() const;
};

// Counts above this are not token counts (no request is a trillion tokens):
// they are ignored, so a broken or hostile upstream cannot overflow a ledger.
inline constexpr std::uint64_t kMaxTokenCount = 1'000'000'000'000ull;

// The fields of one usage object as the provider named them.
struct UsageFields {
    std::optional<std::uint64_t> prompt_tokens, completion_tokens;  // OpenAI chat/completions/embeddings
    std::optional<std::uint64_t> input_tokens, output_tokens;       // Responses API, Anthropic
    std::optional<std::uint64_t> cache_creation_input_tokens, cache_read_input_tokens;  // Anthropic
    // Later objects (Anthropic message_delta after message_start) override
    // the fields they name.
    void merge(const UsageFields& later);
    Usage usage() const;
};

// Reads one JSON value pushed in pieces and keeps the usage objects of the
// provider's framing: top-level "usage", "message.usage" (Anthropic
// message_start) and "response.usage" (Responses API events). Only an object
// that closes is taken, and only integer members it names; nothing else of
// the document (strings, arrays, deeper objects) is ever read as usage.
class JsonUsageScanner {
public:
    void feed(std::string_view bytes);
    // Forgets the current document (the next byte starts a new one); what was
    // already taken stays.
    void restart();
    const UsageFields& fields() const { return taken_; }

private:
    enum class St : std::uint8_t {
        Value, KeyOrEnd, Key, Colon, AfterValue, Str, Esc, Number, Literal, Skip, Done, Broken
    };
    static constexpr std::size_t kKeyMax = 32;
    // Each state's run over a piece [p, e): returns where it stopped (a
    // state change, or e). Strings and skipped subtrees go eight bytes a step.
    void token(char c);  // one byte between tokens: a value's start, a key's quote, ':', ',', '}'
    const char* string_text(const char* p, const char* e);
    const char* after_value(const char* p, const char* e);  // a ',' and the next key's quote, when there
    void begin_key();
    const char* skip(const char* p, const char* e);  // the rest of a container no usage can be in
    const char* number(const char* p, const char* e);
    const char* literal(const char* p, const char* e);
    void open();
    void close();
    void begin_value(char c);
    bool key_is(std::string_view k) const;
    bool could_hold_usage() const;  // the value about to open may be (or hold) a usage object

    St st_ = St::Value;
    std::int64_t depth_ = 0;  // a skipped subtree may nest as deep as its bytes go
    bool str_is_key_ = false;
    char key_[kKeyMax] = {};
    std::size_t key_len_ = 0;
    bool key_long_ = false;
    std::int64_t wrapper_depth_ = 0;  // depth of an open "message"/"response" object, 0: none
    std::int64_t usage_depth_ = 0;    // depth of the open usage object, 0: none
    // St::Skip: only brackets and strings are followed until the depth falls
    // below skip_base_ (no nesting limit needed: only a counter grows).
    std::int64_t skip_base_ = 0;
    bool skip_str_ = false, skip_esc_ = false;
    std::uint64_t num_ = 0;
    bool num_bad_ = false;     // sign, fraction, exponent, overflow, over kMaxTokenCount
    std::optional<std::uint64_t>* num_field_ = nullptr;
    UsageFields pending_;  // members of the usage object being read
    UsageFields taken_;
};

// Follows an SSE stream (any line ending: LF, CRLF, CR; split anywhere) and
// feeds the data lines of each event, joined as the SSE spec joins them, to a
// JsonUsageScanner that starts afresh at every event. Event names, comments
// and other fields are skipped without being kept.
class SseUsageScanner {
public:
    void feed(std::string_view bytes);
    Usage usage() const { return json_.fields().usage(); }
    const UsageFields& fields() const { return json_.fields(); }

private:
    enum class Line : std::uint8_t { Start, Field, Skip, ValueStart, Data };
    void begin_data();
    void end_line();
    Line line_ = Line::Start;
    bool after_cr_ = false;
    char field_[5] = {};
    std::size_t field_len_ = 0;
    bool data_in_event_ = false;  // a data line was seen in this event
    JsonUsageScanner json_;
};

struct ResponsePlan;
struct MockReply;

// What the gateway calls while it relays an answer: picks the scanner from
// the response's plan (SSE, JSON, or nothing readable) and sees every piece
// once, as it goes to the sandbox.
class UsageTap {
public:
    explicit UsageTap(const ResponsePlan& plan);
    // Scans every piece the same way: ANSWER_IS_SSE, else a JSON body.
    explicit UsageTap(bool answer_is_sse);
    void feed(std::string_view data);
    void finish(Usage& out) const;

private:
    enum class Kind : std::uint8_t { None, Json, Sse } kind_;
    JsonUsageScanner json_;
    SseUsageScanner sse_;
};

// Whether a stream of endpoint EP reports usage only when asked
// (stream_options.include_usage: OpenAI chat/completions and completions):
// the terminator then asks, so no streamed answer goes uncounted.
bool asks_stream_usage(Endpoint ep);

// The usage of the mock provider's answer, read the way a provider's is.
Usage usage_of(const MockReply& reply);

}  // namespace redir::terminator
