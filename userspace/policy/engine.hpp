#pragma once
// The policy library as redird and redirctl use it: validate a policy file
// offline, or compile it and write its entries into the kernel maps under a
// given id.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/error.hpp"

namespace redir::loader {
class Datapath;
}

namespace redir::policy {

struct CompiledPolicyInfo {
    std::string name;
    bool inference_enabled = true;
    bool provider_fetch = false;  // policy inference.provider_fetch
    std::string route = "default";  // policy inference.route
    uint64_t requests_per_minute = 0, tokens_per_day = 0;  // policy inference.limits (0: none)
    std::string normalized_json;
    size_t lpm_entries = 0;
    size_t portsets = 0;
    std::vector<std::string> pending_hosts;  // host rules awaiting the DNS responder
    std::shared_ptr<const void> compiled;    // the library's compiled form, for DNS matching
};

// A policy file that failed validation: every located error.
class PolicyRejected : public Error {
public:
    explicit PolicyRejected(std::vector<std::string> errs)
        : Error(errs.empty() ? "policy rejected" : errs.front()), errors(std::move(errs)) {}
    std::vector<std::string> errors;
};

// Throws PolicyRejected for a bad file, redir::Error for a kernel failure.
// NAME_OVERRIDE (non-empty) replaces the file's "name" (`policy load --name`).
CompiledPolicyInfo compile_and_write(const std::string& text, const std::string& source_name, uint32_t policy_id,
                                     loader::Datapath& dp, const std::string& name_override = "");

// Offline check: empty when valid.
std::vector<std::string> validate_policy_text(const std::string& text, const std::string& source_name);

}  // namespace redir::policy
