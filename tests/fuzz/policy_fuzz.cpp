// libFuzzer target for the policy file parser and compiler: any bytes must
// give either a policy or located errors (never a crash or a hang), and a
// policy that loads must survive the properties asserted below; a violation
// aborts so the fuzzer keeps the input.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "policy/compile.hpp"
#include "policy/parse.hpp"

using namespace redir::policy;

namespace {

[[noreturn]] void violated(const char* what, std::string_view input) {
    std::fprintf(stderr, "policy fuzz: property violated: %s\ninput: %.*s\n", what, static_cast<int>(input.size()),
                 input.data());
    std::abort();
}

// Addresses every policy must refuse whatever it says (link-local, metadata).
const Addr kMetadata = v4_mapped(0xa9fea9fe);  // 169.254.169.254

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size > 64 * 1024) return 0;  // files this big are tested by the compiler's own tests
    std::string_view text(reinterpret_cast<const char*>(data), size);
    ParseResult r = parse_policy(text, "fuzz.json");
    if (r.ok() != r.errors.empty()) violated("ok() disagrees with the error list", text);
    if (!r.ok()) {
        for (const auto& d : r.errors) {
            if (d.message.empty()) violated("an error without a message", text);
            (void)d.to_string();
        }
        return 0;
    }
    const Policy& p = *r.policy;
    // The normalised form is a fixed point: it parses back to the same policy.
    const std::string canon = to_json(p);
    ParseResult again = parse_policy(canon, "canon.json");
    if (!again.ok()) violated("to_json output does not parse", text);
    if (to_json(*again.policy) != canon) violated("to_json is not a fixed point", text);
    CompiledPolicy c;
    try {
        c = compile(p, 7);
    } catch (const CompileError& e) {
        if (std::string_view(e.what()).empty()) violated("a compile error without a message", text);
        return 0;
    }
    if (c.policy_id != 7) violated("compiled under another id", text);
    for (const auto& e : c.lpm)
        if (e.key.policy_id != 7) violated("an LPM entry under another id", text);
    for (size_t i = 0; i < c.portsets.size(); ++i)
        if (c.portsets[i].key.policy_id != 7 || c.portsets[i].key.portset_id != i + 1)
            violated("port set ids are not 1..n under the policy id", text);
    // Every host rule's own name (and a name below a wildcard) is decided,
    // and the metadata address is never admitted for it.
    for (const auto& h : c.host_rules) {
        std::string name = h.is_wildcard ? "x" + h.pattern.substr(1) : h.pattern;
        if (auto m = c.match_host(name)) {
            if (c.admit(*m, kMetadata)) violated("the metadata address admitted through DNS", text);
        }
        (void)c.admit(name, v4_mapped(0xcb007101));
    }
    return 0;
}
