// Default main() for real-kernel test binaries: listing the cases works for
// anyone; running them needs root and happens in a private network namespace.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "kernel_main.hpp"
#include "netns.hpp"

namespace redir::testsupport {

bool kernel_test_listing_only() { return ::testing::GTEST_FLAG(list_tests); }

int kernel_test_main(int argc, char** argv, const std::vector<std::string>& lo_addrs) {
    ::testing::InitGoogleTest(&argc, argv);
    // gtest_discover_tests lists the cases at build time: no root, no namespace needed.
    if (kernel_test_listing_only()) return RUN_ALL_TESTS();
    if (::geteuid() != 0) {
        std::fprintf(stderr, "%s needs root (BPF, cgroups, network namespaces): run it as root\n", argv[0]);
        return 1;
    }
    enter_private_netns(lo_addrs);
    // Unprivileged ping sockets are off by default in a new namespace; turn
    // them on so a test shows *our* hook refusing them, not the sysctl.
    std::ofstream("/proc/sys/net/ipv4/ping_group_range") << "0 2147483647\n";
    return RUN_ALL_TESTS();
}

}  // namespace redir::testsupport
