// Deliberate leaks that prove the soak can fail: compiled in only in the soak's sanitized tree (REDIR_SANITIZED_MUTANTS, tests/soak/sanitized_flags.cmake); everywhere else a no-op.
#pragma once

namespace redir::control {

// Called once per control request the agent dispatches. In the sanitized tree
// the environment variable REDIR_LEAK_MUTANT picks a leak: "heap" loses a
// small block per request (LeakSanitizer's report at redird's exit), "fd"
// keeps 4 descriptors per request (the soak's fd growth bound).
// tests/soak/test_soak_fails.py runs a short soak with each and expects it to fail.
void leak_mutant_on_request();

}  // namespace redir::control
