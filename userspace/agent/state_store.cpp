#include "agent/state_store.hpp"

#include <rapidjson/document.h>

#include <filesystem>

#include "common/atomic_file.hpp"
#include "common/error.hpp"
#include "common/json_state.hpp"

namespace fs = std::filesystem;

namespace redir::agent {

StateStore::StateStore(std::string dir) : dir_(std::move(dir)) {
    make_dirs(dir_, 0700);
    make_dirs(dir_ + "/policies", 0700);
}

std::map<std::string, StoredPolicy> StateStore::load_policies() const {
    std::map<std::string, StoredPolicy> out;
    for (auto& e : fs::directory_iterator(dir_ + "/policies")) {
        auto fn = e.path().filename().string();
        if (fn.size() < 6 || fn.substr(fn.size() - 5) != ".json" || fn[0] == '.') continue;
        rapidjson::Document d;
        std::string text = read_file(e.path().string());
        d.Parse(text.c_str());
        if (d.HasParseError() || !d.IsObject() || !d.HasMember("name") || !d.HasMember("source"))
            throw Error("state file " + e.path().string() + " is damaged; move it away to start without it");
        StoredPolicy p;
        p.name = d["name"].GetString();
        p.source = d["source"].GetString();
        p.source_name = d.HasMember("source_name") ? d["source_name"].GetString() : p.name + ".json";
        out[p.name] = std::move(p);
    }
    return out;
}

void StateStore::save_policy(const StoredPolicy& p) {
    write_json_state(dir_ + "/policies/" + p.name + ".json", [&](PrettyJsonOut& j) {
        j.begin().str("name", p.name).str("source_name", p.source_name).str("source", p.source).end();
    });
}

void StateStore::delete_policy(const std::string& name) {
    std::error_code ec;
    fs::remove(dir_ + "/policies/" + name + ".json", ec);
}

std::vector<StoredAttachment> StateStore::load_attachments() const {
    std::vector<StoredAttachment> out;
    std::string path = dir_ + "/attachments.json";
    if (!fs::exists(path)) return out;
    rapidjson::Document d;
    std::string text = read_file(path);
    d.Parse(text.c_str());
    if (d.HasParseError() || !d.IsArray())
        throw Error("state file " + path + " is damaged; move it away to start without it");
    for (auto& v : d.GetArray()) {
        StoredAttachment a;
        a.cgroup_path = v["cgroup"].GetString();
        a.cgroup_id = v["cgroup_id"].GetUint64();
        a.policy = v["policy"].GetString();
        out.push_back(std::move(a));
    }
    return out;
}

void StateStore::save_attachments(const std::vector<StoredAttachment>& as) {
    write_json_state(dir_ + "/attachments.json", [&](PrettyJsonOut& j) {
        j.begin_array();
        for (const auto& a : as)
            j.begin().str("cgroup", a.cgroup_path).num("cgroup_id", a.cgroup_id).str("policy", a.policy).end();
        j.end_array();
    });
}

uint32_t StateStore::load_next_policy_id() const {
    std::string path = dir_ + "/agent.json";
    if (!fs::exists(path)) return 1;
    rapidjson::Document d;
    std::string text = read_file(path);
    d.Parse(text.c_str());
    if (d.HasParseError() || !d.IsObject() || !d.HasMember("next_policy_id")) return 1;
    return d["next_policy_id"].GetUint();
}

void StateStore::save_next_policy_id(uint32_t id) {
    write_json_state(dir_ + "/agent.json", [&](PrettyJsonOut& j) { j.begin().num("next_policy_id", id).end(); });
}

}  // namespace redir::agent
