#pragma once
// Shared start-up of the real-kernel test binaries (see kernel_main.cpp).
#include <string>
#include <vector>

namespace redir::testsupport {

// True when the binary was asked only to list its cases (gtest_discover_tests).
bool kernel_test_listing_only();

// InitGoogleTest, then (unless listing) root check, a private netns with
// LO_ADDRS on its lo, ping sockets enabled; returns RUN_ALL_TESTS().
int kernel_test_main(int argc, char** argv, const std::vector<std::string>& lo_addrs);

}  // namespace redir::testsupport
