// libFuzzer target for the JSON model rewrite: any request body in, and
// either a 400 with a bounded sentence or a body that is one JSON object
// whose top-level "model" is the configured one, with everything the client
// sent otherwise intact. The client's own model reaches the log clipped.
#include <rapidjson/document.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "terminator/request.hpp"

namespace {

using namespace redir::terminator;

constexpr std::size_t kLogMax = 64;
constexpr std::string_view kModel = "fuzz-model";

[[noreturn]] void fail(const char* what) {
    std::fprintf(stderr, "property violated: %s\n", what);
    std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view body(reinterpret_cast<const char*>(data), size);
    auto r = rewrite_model(body, kModel, kLogMax);
    if (r.model_requested.size() > kLogMax + 40) fail("model_requested not clipped");
    if (!r.ok) {
        if (r.error.empty()) fail("refusal without a message");
        if (r.error.size() > kLogMax + 200) fail("refusal message not bounded");
        if (!r.body.empty()) fail("a refused body is still held");
        return 0;
    }
    if (!r.error.empty()) fail("accepted with an error message");
    rapidjson::Document d;
    d.Parse<rapidjson::kParseIterativeFlag | rapidjson::kParseNumbersAsStringsFlag>(r.body.data(), r.body.size());
    if (d.HasParseError()) fail("rewritten body is not JSON");
    if (!d.IsObject()) fail("rewritten body is not an object");
    std::size_t models = 0;
    for (const auto& m : d.GetObject()) {
        if (std::string_view(m.name.GetString(), m.name.GetStringLength()) != "model") continue;
        ++models;
        if (!m.value.IsString() ||
            std::string_view(m.value.GetString(), m.value.GetStringLength()) != kModel)
            fail("top-level model is not the configured one");
    }
    if (models != 1) fail("not exactly one top-level model");
    // Nothing but the model changes size much: the body is never blown up.
    if (r.body.size() > size + kModel.size() + 16 + size / 2) fail("rewritten body grew beyond the input");
    return 0;
}
