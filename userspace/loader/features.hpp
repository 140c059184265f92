#pragma once
// What this kernel and host support, for redird's start-up check and
// `redirctl doctor`.
#include <string>
#include <vector>

namespace redir::loader {

struct FeatureCheck {
    std::string name;
    bool ok = false;
    bool required = true;  // false: redir runs, with the stated loss
    std::string detail;    // what was found, or what to do
};

std::vector<FeatureCheck> check_kernel_features(const std::string& bpffs_dir);

// First failing required check as one sentence, or empty when all pass.
std::string first_missing(const std::vector<FeatureCheck>& checks);

}  // namespace redir::loader
