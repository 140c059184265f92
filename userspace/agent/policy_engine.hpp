#pragma once
// The agent's names for the policy engine (policy/engine.hpp), which redirctl
// uses too; kept so agent code reads as before.
#include "policy/engine.hpp"

namespace redir::agent {

using policy::compile_and_write;
using policy::CompiledPolicyInfo;
using policy::PolicyRejected;
using policy::validate_policy_text;

}  // namespace redir::agent
