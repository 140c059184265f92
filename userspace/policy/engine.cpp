#include "policy/engine.hpp"

#include "loader/datapath.hpp"
#include "policy/compile.hpp"
#include "policy/parse.hpp"

namespace redir::policy {

namespace {

policy::Policy parse_or_throw(const std::string& text, const std::string& source_name) {
    auto r = policy::parse_policy(text, source_name);
    if (!r.ok()) {
        std::vector<std::string> errs;
        for (auto& d : r.errors) errs.push_back(d.to_string());
        throw PolicyRejected(std::move(errs));
    }
    return std::move(*r.policy);
}

}  // namespace

CompiledPolicyInfo compile_and_write(const std::string& text, const std::string& source_name, uint32_t policy_id,
                                     loader::Datapath& dp, const std::string& name_override) {
    policy::Policy p = parse_or_throw(text, source_name);
    if (!name_override.empty()) p.name = name_override;
    std::shared_ptr<policy::CompiledPolicy> c;
    try {
        c = std::make_shared<policy::CompiledPolicy>(policy::compile(p, policy_id));
    } catch (const policy::CompileError& e) {
        throw PolicyRejected({e.what()});
    }
    // Port sets before the prefixes that reference them; all of it before the
    // caller flips any attachment to POLICY_ID.
    for (auto& ps : c->portsets) dp.put_portset(ps.key, ps.set);
    for (auto& e : c->lpm) dp.put_lpm(e.key, e.val);

    CompiledPolicyInfo info;
    info.name = p.name;
    info.inference_enabled = c->inference_enabled;
    info.provider_fetch = p.inference_provider_fetch;
    info.route = p.inference_route;
    info.requests_per_minute = p.inference_requests_per_minute;
    info.tokens_per_day = p.inference_tokens_per_day;
    info.normalized_json = policy::to_json(p);
    info.lpm_entries = c->lpm.size();
    info.portsets = c->portsets.size();
    for (auto& h : c->host_rules) info.pending_hosts.push_back(h.pattern);
    info.compiled = c;
    return info;
}

std::vector<std::string> validate_policy_text(const std::string& text, const std::string& source_name) {
    auto r = policy::parse_policy(text, source_name);
    std::vector<std::string> errs;
    for (auto& d : r.errors) errs.push_back(d.to_string());
    if (r.ok()) {
        try {
            policy::compile(*r.policy, 1);
        } catch (const policy::CompileError& e) {
            errs.push_back(e.what());
        }
    }
    return errs;
}

}  // namespace redir::policy
