// In-memory Datapath: the kernel maps and pinned links as std::maps, with
// failures injectable at every step (see fake_datapath.hpp).
#include "loader/fake_datapath.hpp"

#include <algorithm>

#include "common/error.hpp"

namespace redir::loader {
namespace {

template <typename T>
std::string bytes_of(const T& v) {
    return std::string(reinterpret_cast<const char*>(&v), sizeof(v));
}

// Removes the entries whose key starts with ID (a policy id, a cgroup id).
template <typename Map, typename Id>
size_t erase_with(Map& m, Id id) {
    return std::erase_if(m, [&](const auto& kv) { return kv.first.first == id; });
}

}  // namespace

size_t FakeKernel::policy_entries(uint32_t policy_id) const {
    size_t n = 0;
    for (auto& [k, v] : lpm) n += k.first == policy_id;
    for (auto& [k, v] : portsets) n += k.first == policy_id;
    return n;
}

size_t FakeKernel::admissions_of(uint64_t cgroup_id) const {
    return std::count_if(dns_allow.begin(), dns_allow.end(), [&](const auto& kv) { return kv.first.first == cgroup_id; });
}

const std::vector<std::string>& FakeDatapath::program_names() {
    static const std::vector<std::string> names = {"connect4", "connect6", "sendmsg4", "sendmsg6",
                                                   "recvmsg4", "recvmsg6", "getpeername4", "getpeername6",
                                                   "sockops", "sock_create", "setsockopt"};
    return names;
}

FakeDatapath::FakeDatapath(FakeKernel& kernel, int generation) : kernel_(kernel), generation_(generation) {
    lsm_probe_.detail = "fake datapath: no LSM program";
}

void FakeDatapath::fail_at(const std::string& name, int nth) { armed_[name] = calls_[name] + nth; }

int FakeDatapath::calls(const std::string& name) const {
    auto it = calls_.find(name);
    return it == calls_.end() ? 0 : it->second;
}

void FakeDatapath::step(const std::string& name) {
    int n = ++calls_[name];
    auto it = armed_.find(name);
    if (it != armed_.end() && it->second == n) {
        armed_.erase(it);
        throw Error("fake datapath: injected failure at " + name);
    }
}

void FakeDatapath::changed(const char* name) {
    if (after_change) after_change(name);
}

void FakeDatapath::link_missing(uint64_t cgroup_id, std::vector<std::string>& created) {
    auto& links = kernel_.links[cgroup_id];
    for (auto& p : program_names()) {
        if (links.count(p)) continue;
        step("attach_link");
        links[p] = generation_;
        created.push_back(p);
        changed("attach_link");
    }
}

void FakeDatapath::attach(const Cgroup& cg, const redir_attach_val& val) {
    step("attach");
    if (kernel_.attach.count(cg.id)) throw Error(cg.path + " is already attached; detach it first");
    kernel_.attach[cg.id] = val;
    changed("attach_entry");
    std::vector<std::string> created;
    try {
        link_missing(cg.id, created);
    } catch (...) {
        // The real one's undo: created pins, the emptied directory, the entry.
        for (auto& p : created) kernel_.links[cg.id].erase(p);
        if (kernel_.links[cg.id].empty()) kernel_.links.erase(cg.id);
        kernel_.attach.erase(cg.id);
        throw;
    }
}

void FakeDatapath::adopt(const Cgroup& cg, const redir_attach_val& val) {
    step("adopt");
    set_attachment(cg.id, val);
    if (auto it = kernel_.links.find(cg.id); it != kernel_.links.end())
        for (auto& [name, gen] : it->second) {
            gen = generation_;
            changed("adopt_link");
        }
    std::vector<std::string> created;
    link_missing(cg.id, created);
}

void FakeDatapath::set_attachment(uint64_t cgroup_id, const redir_attach_val& val) {
    step("set_attachment");
    kernel_.attach[cgroup_id] = val;
    changed("set_attachment");
}

void FakeDatapath::attach_guard(uint64_t cgroup_id, uint32_t ifindex) {
    step("attach_guard");
    if (auto it = kernel_.guards.find(ifindex); it != kernel_.guards.end() && it->second != cgroup_id)
        throw Error("interface " + std::to_string(ifindex) + " already guards another sandbox");
    kernel_.guards[ifindex] = cgroup_id;
    kernel_.links[cgroup_id]["guard"] = generation_;
    changed("attach_guard");
}

std::optional<GuardState> FakeDatapath::guard_state(uint64_t cgroup_id) const {
    auto v = attachment(cgroup_id);
    if (!v || !v->guard_ifindex) return std::nullopt;
    GuardState g{v->guard_ifindex, "if" + std::to_string(v->guard_ifindex), "fake", false, ""};
    auto it = kernel_.guards.find(v->guard_ifindex);
    g.active = it != kernel_.guards.end() && it->second == cgroup_id;
    if (!g.active) g.problem = "no guard entry for its interface";
    return g;
}

std::optional<redir_attach_val> FakeDatapath::attachment(uint64_t cgroup_id) const {
    auto it = kernel_.attach.find(cgroup_id);
    if (it == kernel_.attach.end()) return std::nullopt;
    return it->second;
}

std::vector<uint64_t> FakeDatapath::attachment_ids() const {
    std::vector<uint64_t> ids;
    for (auto& [id, v] : kernel_.attach) ids.push_back(id);
    return ids;
}

void FakeDatapath::detach(uint64_t cgroup_id) {
    step("detach");
    // Links first, entry last, like the real one.
    kernel_.links.erase(cgroup_id);
    changed("detach_links");
    std::erase_if(kernel_.guards, [&](const auto& kv) { return kv.second == cgroup_id; });
    kernel_.attach.erase(cgroup_id);
    kernel_.event_drops.erase(cgroup_id);
    delete_dns_allow_for(cgroup_id);
    changed("detach_entry");
}

std::vector<PinnedAttachment> FakeDatapath::pinned_attachments() const {
    std::vector<PinnedAttachment> out;
    for (auto& [id, progs] : kernel_.links) {
        PinnedAttachment pa{id, {}};
        for (auto& [name, gen] : progs) pa.programs.push_back(name);
        out.push_back(std::move(pa));
    }
    return out;
}

void FakeDatapath::put_lpm(const redir_lpm_key& k, const redir_lpm_val& v) {
    step("put_lpm");
    kernel_.lpm[{k.policy_id, bytes_of(k)}] = v;
    changed("put_lpm");
}

void FakeDatapath::put_portset(const redir_portset_key& k, const redir_portset& v) {
    step("put_portset");
    kernel_.portsets[{k.policy_id, bytes_of(k)}] = v;
    changed("put_portset");
}

size_t FakeDatapath::delete_policy(uint32_t policy_id) {
    step("delete_policy");
    size_t n = erase_with(kernel_.lpm, policy_id) + erase_with(kernel_.portsets, policy_id);
    changed("delete_policy");
    return n;
}

std::set<uint32_t> FakeDatapath::policy_ids() const {
    std::set<uint32_t> ids;
    for (auto& [k, v] : kernel_.lpm) ids.insert(k.first);
    for (auto& [k, v] : kernel_.portsets) ids.insert(k.first);
    return ids;
}

void FakeDatapath::put_dns_allow(const redir_dns_allow_key& k, const redir_dns_allow_val& v) {
    step("put_dns_allow");
    if (!kernel_.attach.count(k.cgroup_id)) ++kernel_.stray_admissions;
    kernel_.dns_allow[{k.cgroup_id, bytes_of(k.addr)}] = {k, v};
}

void FakeDatapath::delete_dns_allow(const redir_dns_allow_key& k) {
    kernel_.dns_allow.erase({k.cgroup_id, bytes_of(k.addr)});
}

size_t FakeDatapath::delete_dns_allow_for(uint64_t cgroup_id) { return erase_with(kernel_.dns_allow, cgroup_id); }

std::vector<DnsAdmission> FakeDatapath::dns_admissions() const {
    std::vector<DnsAdmission> out;
    for (auto& [k, kv] : kernel_.dns_allow) out.push_back(kv);
    return out;
}

uint64_t FakeDatapath::event_drops(uint64_t cgroup_id) const {
    auto it = kernel_.event_drops.find(cgroup_id);
    return it == kernel_.event_drops.end() ? 0 : it->second;
}

}  // namespace redir::loader
