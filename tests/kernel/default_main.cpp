// main() for a real-kernel test file that has none: the standard fake addresses.
// In a static library, so a file with its own main() never pulls this one in.
#include "kernel_main.hpp"

int main(int argc, char** argv) {
    return redir::testsupport::kernel_test_main(argc, argv, {"203.0.113.1/24", "198.51.100.1/24", "2001:db8::1/64"});
}
