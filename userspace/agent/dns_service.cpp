#include "agent/dns_service.hpp"

#include <time.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <spdlog/spdlog.h>
#include <unordered_map>
#include <vector>

#include "agent/audit_log.hpp"
#include "agent/owner_lookup.hpp"
#include "agent/json_out.hpp"
#include "agent/socket_owner.hpp"
#include "common/addr.hpp"
#include "common/error.hpp"
#include "dns/server.hpp"
#include "loader/datapath.hpp"
#include "policy/compile.hpp"

namespace asio = boost::asio;

namespace redir::agent {
namespace {

uint64_t boot_ns() {
    timespec ts{};
    ::clock_gettime(CLOCK_BOOTTIME, &ts);  // the clock bpf_ktime_get_boot_ns() reads
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

asio::ip::udp::endpoint parse_endpoint(const std::string& s) {
    std::string host = s;
    uint16_t port = 53;
    if (!s.empty() && s[0] == '[') {
        auto close = s.find(']');
        host = s.substr(1, close - 1);
        if (close + 1 < s.size() && s[close + 1] == ':') port = static_cast<uint16_t>(std::stoi(s.substr(close + 2)));
    } else if (std::count(s.begin(), s.end(), ':') == 1) {
        host = s.substr(0, s.find(':'));
        port = static_cast<uint16_t>(std::stoi(s.substr(s.find(':') + 1)));
    }
    boost::system::error_code ec;
    auto addr = asio::ip::make_address(host, ec);
    if (ec) throw Error("--dns-upstream " + s + " is not IP[:PORT]");
    return {addr, port};
}

const char* qtype_name(uint16_t t) {
    switch (t) {
        case 1: return "A";
        case 28: return "AAAA";
        case 5: return "CNAME";
        case 15: return "MX";
        case 16: return "TXT";
        case 33: return "SRV";
        case 65: return "HTTPS";
        case 255: return "ANY";
        default: return "other";
    }
}

}  // namespace

std::string default_dns_upstream() {
    std::ifstream in("/etc/resolv.conf");
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream ss(line);
        std::string key, val;
        ss >> key >> val;
        if (key == "nameserver" && !val.empty()) return val.find(':') != std::string::npos ? "[" + val + "]:53" : val + ":53";
    }
    return "127.0.0.1:53";
}

// Admissions of one sandbox. The responder's HostMatch carries an index into
// `names` so admit() knows which name was resolved and lets the policy
// compiler (the one source of truth) decide each address.
// Shared ownership: the responder's callbacks hold it weakly, so a callback
// racing a detach finds it gone instead of freed.
struct DnsService::Sandbox : dns::Admitter, std::enable_shared_from_this<DnsService::Sandbox> {
    uint64_t cgroup_id = 0;
    loader::Datapath* dp = nullptr;
    AdmissionJournal* journal = nullptr;
    size_t quota = 0;
    std::mutex mu;
    std::shared_ptr<const policy::CompiledPolicy> compiled;
    uint32_t policy_id = 0;
    std::vector<std::string> names;
    std::unordered_map<std::string, uint32_t> name_ids;
    struct Admitted {
        std::string name;
        uint64_t expires_ns = 0;
    };
    std::map<std::array<uint8_t, 16>, Admitted> admitted;
    std::shared_ptr<dns::ConnectionBudget> tcp_budget;  // both families' TCP connections
    std::atomic<uint64_t> quota_refusals{0};
    std::atomic<uint16_t> port{0};
    std::unique_ptr<dns::Responder> responder;
    std::unique_ptr<dns::Responder> responder6;  // same port on ::1, for sandboxes asking over IPv6
    // Same port on the agent's addresses on the side of a sandbox in its own
    // network namespace, bound to that interface: only it reaches them.
    std::vector<std::unique_ptr<dns::Responder>> target_responders;

    void stop() {
        responder->stop();
        if (responder6) responder6->stop();
        for (auto& r : target_responders) r->stop();
    }

    std::vector<dns::Responder*> responders() const {
        std::vector<dns::Responder*> out{responder.get(), responder6.get()};
        for (auto& r : target_responders) out.push_back(r.get());
        return out;
    }

    uint32_t intern(std::string_view name) {
        std::lock_guard lk(mu);
        auto it = name_ids.find(std::string(name));
        if (it != name_ids.end()) return it->second;
        if (names.size() >= 65536) {  // bound memory; ids of in-flight lookups may then miss
            names.clear();
            name_ids.clear();
        }
        names.emplace_back(name);
        name_ids.emplace(std::string(name), static_cast<uint32_t>(names.size() - 1));
        return static_cast<uint32_t>(names.size() - 1);
    }

    redir_dns_allow_key key_for(const std::array<uint8_t, 16>& addr) const {
        redir_dns_allow_key k{};
        k.cgroup_id = cgroup_id;
        std::memcpy(k.addr.b, addr.data(), 16);
        return k;
    }

    void write(const std::array<uint8_t, 16>& addr, uint32_t portset, uint64_t expires) {
        redir_dns_allow_key k = key_for(addr);
        redir_dns_allow_val v{};
        v.policy_id = policy_id;
        v.portset_id = portset;
        v.expires_ns = expires;
        dp->put_dns_allow(k, v);
    }

    void bpf_delete(const std::array<uint8_t, 16>& addr) {
        dp->delete_dns_allow(key_for(addr));
    }

    // Frees expired admissions (the kernel already ignores them). Holds mu.
    void purge_expired_locked(uint64_t now) {
        for (auto it = admitted.begin(); it != admitted.end();) {
            if (it->second.expires_ns <= now) {
                bpf_delete(it->first);
                it = admitted.erase(it);
            } else {
                ++it;
            }
        }
    }

    void admit(const std::vector<dns::Admission>& as, const dns::HostMatch& m) override {
        std::lock_guard lk(mu);
        if (m.portset_id >= names.size() || !compiled) return;
        const std::string name = names[m.portset_id];
        const uint64_t now = boot_ns();
        struct Todo {
            std::array<uint8_t, 16> addr;
            uint32_t portset;
            uint64_t expires;
        };
        std::vector<Todo> todo;
        size_t fresh = 0;
        for (auto& a : as) {
            policy::Addr addr;
            std::memcpy(addr.data(), a.addr.data(), 16);
            auto ps = compiled->admit(name, addr);
            if (!ps) continue;  // rebinding defence, allowed_ips, or no ports left
            todo.push_back({a.addr, *ps, now + static_cast<uint64_t>(a.ttl_seconds) * 1000000000ull});
            fresh += !admitted.count(a.addr);
        }
        if (fresh && admitted.size() + fresh > quota) {
            purge_expired_locked(now);
            if (admitted.size() + fresh > quota) {
                ++quota_refusals;
                throw dns::QuotaExceeded("cgroup " + std::to_string(cgroup_id) + " holds its quota of " +
                                         std::to_string(quota) + " DNS admissions");
            }
        }
        for (auto& t : todo) {
            auto it = admitted.find(t.addr);
            const uint64_t exp = it == admitted.end() ? t.expires : std::max(it->second.expires_ns, t.expires);
            write(t.addr, t.portset, exp);  // throws when the map is full: SERVFAIL
            auto& rec = admitted[t.addr];
            if (rec.name != name) journal->append(cgroup_id, t.addr, name);
            rec.name = name;
            rec.expires_ns = exp;
        }
    }

    static dns::SandboxView view(const std::shared_ptr<Sandbox>& self, const DnsOptions& o) {
        dns::SandboxView v;
        {
            std::lock_guard lk(self->mu);
            v.inference_enabled = self->compiled ? self->compiled->inference_enabled : false;
        }
        v.vip4 = o.vip4;
        v.vip6 = o.vip6;
        v.match_host = [weak = std::weak_ptr<Sandbox>(self)](std::string_view name) -> std::optional<dns::HostMatch> {
            auto sb = weak.lock();
            if (!sb) return std::nullopt;  // detached meanwhile
            std::shared_ptr<const policy::CompiledPolicy> c;
            {
                std::lock_guard lk(sb->mu);
                c = sb->compiled;
            }
            if (!c || !c->match_host(name)) return std::nullopt;
            dns::HostMatch hm;
            hm.portset_id = sb->intern(name);
            return hm;  // admit() decides each address with the compiled policy
        };
        return v;
    }

    // Re-decides every admitted address under the current policy.
    void revalidate() {
        std::lock_guard lk(mu);
        uint64_t now = boot_ns();
        for (auto it = admitted.begin(); it != admitted.end();) {
            policy::Addr addr;
            std::memcpy(addr.data(), it->first.data(), 16);
            std::optional<uint32_t> ps;
            if (compiled && it->second.expires_ns > now) ps = compiled->admit(it->second.name, addr);
            if (ps) {
                write(it->first, *ps, it->second.expires_ns);
                ++it;
            } else {
                bpf_delete(it->first);
                it = admitted.erase(it);
            }
        }
    }

    // Restart: one admission the previous agent left, re-decided under the
    // current policy. False: withdrawn.
    bool adopt(const redir_dns_allow_key& k, const redir_dns_allow_val& v, const std::string* name, uint64_t now) {
        std::array<uint8_t, 16> a;
        std::memcpy(a.data(), k.addr.b, 16);
        std::lock_guard lk(mu);
        std::optional<uint32_t> ps;
        if (name && compiled && v.expires_ns > now && admitted.size() < quota) {
            policy::Addr addr;
            std::memcpy(addr.data(), a.data(), 16);
            ps = compiled->admit(*name, addr);
        }
        if (!ps) {
            bpf_delete(a);
            return false;
        }
        try {
            write(a, *ps, v.expires_ns);
        } catch (const std::exception&) {
            bpf_delete(a);
            return false;
        }
        admitted[a] = Admitted{*name, v.expires_ns};
        return true;
    }
};

namespace {
// One sandbox's responder counters added to C. tcp_open is a gauge: only a
// LIVE sandbox's open connections count, never a removed one's.
void add_counters(DnsCounters& c, const DnsService::Sandbox& sb, bool live) {
    for (auto* r : sb.responders()) {
        if (!r) continue;
        auto st = r->stats();
        c.queries += st.queries;
        c.refused += st.refused;
        c.admissions += st.admissions;
        if (live) c.tcp_open += st.tcp_open;
        c.tcp_refused += st.tcp_refused;
        c.tcp_cut += st.tcp_cut;
        c.accept_backoffs += st.accept_backoffs;
    }
    c.quota_refusals += sb.quota_refusals;
}
}  // namespace

DnsService::DnsService(asio::io_context& io, loader::Datapath& dp, AuditLog& audit, DnsOptions opts)
    : io_(io),
      dp_(dp),
      audit_(audit),
      opts_(std::move(opts)),
      journal_(opts_.journal_path),
      tcp_total_(std::make_shared<dns::ConnectionBudget>(opts_.tcp_total)),
      owners_(std::make_unique<OwnerLookups>(io, opts_.owner_lookup_queue)),
      expiry_timer_(io) {
    upstream_ = opts_.upstream.empty() ? default_dns_upstream() : opts_.upstream;
    parse_endpoint(upstream_);  // fail at start, not at the first query
    // What a previous agent admitted stays in the pinned map; restore()
    // re-keys it (adopt_admissions) or removes it (finish_restore).
    for (auto& [k, v] : dp_.dns_admissions()) inherited_[k.cgroup_id].push_back({k, v});
    if (!inherited_.empty()) inherited_names_ = journal_.load();
    schedule_expiry();
}

DnsService::~DnsService() {
    for (auto& [id, sb] : sandboxes_) sb->stop();
}

uint16_t DnsService::add(uint64_t cgroup_id, const std::string& cgroup_path,
                         std::shared_ptr<const policy::CompiledPolicy> compiled, uint32_t policy_id,
                         const enforce::RedirectTarget& target) {
    auto sb = std::make_shared<Sandbox>();
    sb->cgroup_id = cgroup_id;
    sb->dp = &dp_;
    sb->journal = &journal_;
    sb->quota = opts_.max_admissions_per_sandbox;
    sb->compiled = std::move(compiled);
    sb->policy_id = policy_id;
    sb->tcp_budget = std::make_shared<dns::ConnectionBudget>(opts_.tcp_per_sandbox);
    dns::ResponderConfig cfg;
    cfg.upstream = parse_endpoint(upstream_);
    cfg.ttl.floor_seconds = opts_.ttl_floor_s;
    cfg.ttl.ceiling_seconds = opts_.ttl_ceiling_s;
    cfg.max_tcp_connections = opts_.tcp_per_sandbox;
    cfg.max_tcp_queued_bytes = opts_.tcp_queued_bytes;
    cfg.tcp_idle_timeout = opts_.tcp_idle_timeout;
    cfg.tcp_budgets = {sb->tcp_budget, tcp_total_};
    cfg.accept_allowed = opts_.accept_allowed;
    auto* audit = &audit_;
    auto* owners = owners_.get();
    std::weak_ptr<Sandbox> weak = sb;
    // The refusal's reply waits for its record: the asking process is named
    // while its socket still exists (a client exits as soon as it has its
    // NXDOMAIN). The lookup runs on the worker; with its queue full, or for a
    // rate-limited repeat, the reply goes at once.
    auto hook = [audit, owners, weak, cgroup_id, cgroup_path](std::string_view name, uint16_t qtype,
                                                               dns::Verdict v, const dns::QueryOrigin& from,
                                                               std::function<void()> resume) {
        // Repeated identical refusals are counted, not written (nor looked up).
        std::string key = "dns " + std::string(dns::to_string(v)) + " " + std::string(name) + " " + qtype_name(qtype);
        if (!audit->admit(cgroup_id, key)) return resume();
        auto sb = weak.lock();
        OwnerQuery q;
        q.tcp = from.tcp;
        auto peer = addr_parse(from.address.to_string());
        auto local = addr_parse(from.address.is_v4() ? "127.0.0.1" : "::1");
        if (peer) q.peer = *peer;
        q.peer_port = from.port;
        q.local = *local;
        q.local_port = sb ? sb->port.load() : 0;
        q.cgroup_path = cgroup_path;
        auto record = [audit, cgroup_id, name = std::string(name), qtype, v, tcp = from.tcp,
                       resume](std::optional<ProcessInfo> owner) {
            JsonOut j;
            j.begin()
                .num("ts_ms", now_ms())
                .str("event", "dns")
                .str("verdict", dns::to_string(v))
                .str("name", name)
                .str("type", qtype_name(qtype))
                .num("qtype", qtype)
                .num("cgroup_id", cgroup_id)
                .num("pid", owner ? owner->pid : 0)
                .str("comm", owner ? owner->comm : "")
                .str("protocol", tcp ? "tcp" : "udp")
                .end();
            audit->write(j.take());
            resume();
        };
        // The process behind the query is found off the io thread; without a
        // peer address there is nothing to look up.
        if (!peer || !sb) return record(std::nullopt);
        owners->submit(std::move(q), std::move(record));
    };
    sb->responder = std::make_unique<dns::Responder>(io_, cfg, Sandbox::view(sb, opts_), *sb);
    sb->responder->set_deferring_event_hook(hook);
    sb->responder->start();
    uint16_t port = sb->responder->port();
    sb->port = port;
    try {
        dns::ResponderConfig cfg6 = cfg;
        cfg6.listen = asio::ip::make_address("::1");
        cfg6.port = port;
        sb->responder6 = std::make_unique<dns::Responder>(io_, cfg6, Sandbox::view(sb, opts_), *sb);
        sb->responder6->set_deferring_event_hook(hook);
        sb->responder6->start();
    } catch (const std::exception& e) {
        sb->responder6.reset();
        spdlog::warn("no IPv6 DNS listener for cgroup {} ({}); IPv6 resolvers will fail closed", cgroup_id, e.what());
    }
    if (target.served()) {
        try {
            for (auto* a : {&target.addr4, &target.addr6}) {
                if (addr_is_zero(*a)) continue;
                dns::ResponderConfig cfgt = cfg;
                cfgt.listen = asio::ip::make_address(addr_to_string(*a));
                cfgt.port = port;
                cfgt.device = target.device;
                auto r = std::make_unique<dns::Responder>(io_, cfgt, Sandbox::view(sb, opts_), *sb);
                r->set_deferring_event_hook(hook);
                r->start();
                sb->target_responders.push_back(std::move(r));
            }
        } catch (const std::exception& e) {
            sb->stop();
            throw Error("cannot start the DNS responder of cgroup " + cgroup_path + " on " + target.device +
                        " (its network namespace's redirect target): " + e.what());
        }
    }
    sandboxes_[cgroup_id] = std::move(sb);
    return port;
}

void DnsService::update(uint64_t cgroup_id, std::shared_ptr<const policy::CompiledPolicy> compiled,
                        uint32_t policy_id) {
    auto it = sandboxes_.find(cgroup_id);
    if (it == sandboxes_.end()) return;
    auto& sb = it->second;
    {
        std::lock_guard lk(sb->mu);
        sb->compiled = std::move(compiled);
        sb->policy_id = policy_id;
    }
    sb->responder->set_view(Sandbox::view(sb, opts_));
    if (sb->responder6) sb->responder6->set_view(Sandbox::view(sb, opts_));
    for (auto& r : sb->target_responders) r->set_view(Sandbox::view(sb, opts_));
    sb->revalidate();
}

void DnsService::remove(uint64_t cgroup_id) {
    auto it = sandboxes_.find(cgroup_id);
    if (it == sandboxes_.end()) return;
    auto& sb = *it->second;
    sb.stop();
    add_counters(retired_, sb, false);
    sandboxes_.erase(it);
    dp_.delete_dns_allow_for(cgroup_id);
}

uint16_t DnsService::port(uint64_t cgroup_id) const {
    auto it = sandboxes_.find(cgroup_id);
    return it == sandboxes_.end() ? 0 : it->second->responder->port();
}

void DnsService::adopt_admissions(uint64_t cgroup_id) {
    auto inh = inherited_.find(cgroup_id);
    if (inh == inherited_.end()) return;
    auto sit = sandboxes_.find(cgroup_id);
    const uint64_t now = boot_ns();
    for (auto& [k, v] : inh->second) {
        AdmissionJournal::Addr a;
        std::memcpy(a.data(), k.addr.b, 16);
        auto n = inherited_names_.find({cgroup_id, a});
        const std::string* name = n == inherited_names_.end() ? nullptr : &n->second;
        bool kept = false;
        if (sit != sandboxes_.end()) {
            kept = sit->second->adopt(k, v, name, now);
        } else {
            dp_.delete_dns_allow(k);
        }
        kept ? ++restored_ : ++restore_withdrawn_;
    }
    inherited_.erase(inh);
}

void DnsService::finish_restore() {
    // Cgroups detached or gone while no agent ran: their admissions go.
    for (auto& [cg, entries] : inherited_) {
        for (auto& [k, v] : entries) dp_.delete_dns_allow(k);
        restore_withdrawn_ += entries.size();
    }
    inherited_.clear();
    inherited_names_.clear();
    compact_journal();
    if (restored_ || restore_withdrawn_)
        spdlog::info("DNS admissions after restart: {} re-keyed under the new policies, {} withdrawn", restored_,
                     restore_withdrawn_);
}

void DnsService::compact_journal() {
    AdmissionJournal::Names live;
    for (auto& [id, sb] : sandboxes_) {
        std::lock_guard lk(sb->mu);
        for (auto& [addr, rec] : sb->admitted) live[{id, addr}] = rec.name;
    }
    journal_.rewrite(live);
}

DnsCounters DnsService::counters() const {
    DnsCounters c = retired_;
    for (auto& [id, sb] : sandboxes_) {
        add_counters(c, *sb, true);
        std::lock_guard lk(sb->mu);
        c.admissions_live += sb->admitted.size();
    }
    c.owner_lookups = owners_->done();
    c.owner_lookups_skipped = owners_->skipped();
    c.restored = restored_;
    c.restore_withdrawn = restore_withdrawn_;
    c.journal_errors = journal_.write_errors();
    return c;
}

void DnsService::schedule_expiry() {
    expiry_timer_.expires_after(std::chrono::seconds(5));
    expiry_timer_.async_wait([this](boost::system::error_code ec) {
        if (ec) return;
        expire();
        schedule_expiry();
    });
}

void DnsService::expire() {
    // The kernel ignores expired entries already; this only frees the memory.
    uint64_t now = boot_ns();
    size_t live = 0;
    for (auto& [id, sb] : sandboxes_) {
        std::lock_guard lk(sb->mu);
        sb->purge_expired_locked(now);
        live += sb->admitted.size();
    }
    // The journal only grows between compactions; keep it near the live set.
    if (journal_.lines() > 2 * live + 1024) compact_journal();
}

}  // namespace redir::agent
