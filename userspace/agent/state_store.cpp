#include "agent/state_store.hpp"

#include <rapidjson/document.h>
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>

#include <filesystem>

#include "common/atomic_file.hpp"
#include "common/error.hpp"

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
    rapidjson::StringBuffer sb;
    rapidjson::PrettyWriter<rapidjson::StringBuffer> w(sb);
    w.StartObject();
    w.Key("name");
    w.String(p.name.c_str());
    w.Key("source_name");
    w.String(p.source_name.c_str());
    w.Key("source");
    w.String(p.source.c_str(), static_cast<rapidjson::SizeType>(p.source.size()));
    w.EndObject();
    write_file_atomic(dir_ + "/policies/" + p.name + ".json", sb.GetString(), 0600);
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
    rapidjson::StringBuffer sb;
    rapidjson::PrettyWriter<rapidjson::StringBuffer> w(sb);
    w.StartArray();
    for (auto& a : as) {
        w.StartObject();
        w.Key("cgroup");
        w.String(a.cgroup_path.c_str());
        w.Key("cgroup_id");
        w.Uint64(a.cgroup_id);
        w.Key("policy");
        w.String(a.policy.c_str());
        w.EndObject();
    }
    w.EndArray();
    write_file_atomic(dir_ + "/attachments.json", sb.GetString(), 0600);
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
    write_file_atomic(dir_ + "/agent.json", "{\"next_policy_id\": " + std::to_string(id) + "}\n", 0600);
}

}  // namespace redir::agent
