// The deliberate leaks of leak_mutant.hpp; without REDIR_SANITIZED_MUTANTS (every build but the soak's sanitized tree) an empty function.
#include "control/leak_mutant.hpp"

#ifdef REDIR_SANITIZED_MUTANTS
#include <fcntl.h>

#include <cstdlib>
#include <new>
#include <string_view>
#endif

namespace redir::control {

#ifdef REDIR_SANITIZED_MUTANTS
namespace {
// Only the newest block stays reachable; LeakSanitizer reports every earlier one.
void* volatile newest_block = nullptr;
constexpr int kFdsPerRequest = 4;

std::string_view mutant() {
    static const char* m = std::getenv("REDIR_LEAK_MUTANT");
    return m ? m : "";
}
}  // namespace

void leak_mutant_on_request() {
    if (mutant() == "heap") {
        newest_block = ::operator new(64);
    } else if (mutant() == "fd") {
        for (int i = 0; i < kFdsPerRequest; i++) (void)::open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
}
#else
void leak_mutant_on_request() {}
#endif

}  // namespace redir::control
