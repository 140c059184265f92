#pragma once
// What the agent must remember across restarts, as files in --state-dir.
// Every write is atomic (temp file, fsync, rename) so a crash leaves either
// the old or the new state, never a torn file.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "enforce/sandbox.hpp"

namespace redir::agent {

struct StoredPolicy {
    std::string name;
    std::string source;      // the policy file's text as loaded
    std::string source_name; // file name it came from (for messages)
};

using enforce::StoredAttachment;

class StateStore {
public:
    explicit StateStore(std::string dir);

    const std::string& dir() const { return dir_; }

    std::map<std::string, StoredPolicy> load_policies() const;
    void save_policy(const StoredPolicy& p);
    void delete_policy(const std::string& name);

    std::vector<StoredAttachment> load_attachments() const;
    void save_attachments(const std::vector<StoredAttachment>& a);

    uint32_t load_next_policy_id() const;
    void save_next_policy_id(uint32_t id);

private:
    std::string dir_;
};

}  // namespace redir::agent
