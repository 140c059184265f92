#include "agent/dns_service.hpp"

#include <time.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <spdlog/spdlog.h>
#include <unordered_map>
#include <vector>

#include "agent/audit_log.hpp"
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
struct DnsService::Sandbox : dns::Admitter {
    uint64_t cgroup_id = 0;
    loader::Datapath* dp = nullptr;
    std::mutex mu;
    std::shared_ptr<const policy::CompiledPolicy> compiled;
    uint32_t policy_id = 0;
    std::vector<std::string> names;
    std::unordered_map<std::string, uint32_t> name_ids;
    struct Admitted {
        std::string name;
        uint64_t expires_ns;
    };
    std::map<std::array<uint8_t, 16>, Admitted> admitted;
    std::unique_ptr<dns::Responder> responder;
    std::unique_ptr<dns::Responder> responder6;  // same port on ::1, for sandboxes asking over IPv6

    void stop() {
        responder->stop();
        if (responder6) responder6->stop();
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

    void admit(const std::vector<dns::Admission>& as, const dns::HostMatch& m) override {
        std::lock_guard lk(mu);
        if (m.portset_id >= names.size() || !compiled) return;
        const std::string& name = names[m.portset_id];
        uint64_t now = boot_ns();
        for (auto& a : as) {
            policy::Addr addr;
            std::memcpy(addr.data(), a.addr.data(), 16);
            auto ps = compiled->admit(name, addr);
            if (!ps) continue;  // rebinding defence, allowed_ips, or no ports left
            uint64_t exp = now + static_cast<uint64_t>(a.ttl_seconds) * 1000000000ull;
            auto& rec = admitted[a.addr];
            rec.name = name;
            rec.expires_ns = std::max(rec.expires_ns, exp);
            write(a.addr, *ps, rec.expires_ns);
        }
    }

    dns::SandboxView view(const DnsOptions& o) {
        dns::SandboxView v;
        v.inference_enabled = compiled ? compiled->inference_enabled : false;
        v.vip4 = o.vip4;
        v.match_host = [this](std::string_view name) -> std::optional<dns::HostMatch> {
            std::shared_ptr<const policy::CompiledPolicy> c;
            {
                std::lock_guard lk(mu);
                c = compiled;
            }
            if (!c || !c->match_host(name)) return std::nullopt;
            dns::HostMatch hm;
            hm.portset_id = intern(name);
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
                bpf_delete(key_for(it->first));
                it = admitted.erase(it);
            }
        }
    }

    void bpf_delete(const redir_dns_allow_key& k);
};

}  // namespace redir::agent

#include <bpf/bpf.h>

namespace redir::agent {

void DnsService::Sandbox::bpf_delete(const redir_dns_allow_key& k) {
    bpf_map_delete_elem(dp->map_fd("dns_allow"), &k);
}

DnsService::DnsService(asio::io_context& io, loader::Datapath& dp, AuditLog& audit, DnsOptions opts)
    : io_(io), dp_(dp), audit_(audit), opts_(std::move(opts)), expiry_timer_(io) {
    upstream_ = opts_.upstream.empty() ? default_dns_upstream() : opts_.upstream;
    parse_endpoint(upstream_);  // fail at start, not at the first query
    schedule_expiry();
}

DnsService::~DnsService() {
    for (auto& [id, sb] : sandboxes_) sb->stop();
}

uint16_t DnsService::add(uint64_t cgroup_id, const std::string& cgroup_path,
                         std::shared_ptr<const policy::CompiledPolicy> compiled, uint32_t policy_id) {
    auto sb = std::make_unique<Sandbox>();
    sb->cgroup_id = cgroup_id;
    sb->dp = &dp_;
    sb->compiled = std::move(compiled);
    sb->policy_id = policy_id;
    dns::ResponderConfig cfg;
    cfg.upstream = parse_endpoint(upstream_);
    cfg.ttl.floor_seconds = opts_.ttl_floor_s;
    cfg.ttl.ceiling_seconds = opts_.ttl_ceiling_s;
    auto* audit = &audit_;
    uint64_t cg = cgroup_id;
    auto* sbp = sb.get();
    auto hook = [audit, cg, cgroup_path, sbp](std::string_view name, uint16_t qtype, dns::Verdict v,
                                              const dns::QueryOrigin& from) {
        // The responder saw a datagram; the process behind it is found from
        // its source address among the sandbox's processes.
        std::optional<ProcessInfo> owner;
        if (auto peer = addr_parse(from.address.to_string())) {
            auto local = addr_parse(from.address.is_v4() ? "127.0.0.1" : "::1");
            owner = find_socket_owner(from.tcp, *peer, from.port, *local, sbp->responder ? sbp->responder->port() : 0,
                                      cgroup_path);
        }
        JsonOut j;
        j.begin()
            .num("ts_ms", now_ms())
            .str("event", "dns")
            .str("verdict", dns::to_string(v))
            .str("name", name)
            .str("type", qtype_name(qtype))
            .num("qtype", qtype)
            .num("cgroup_id", cg)
            .num("pid", owner ? owner->pid : 0)
            .str("comm", owner ? owner->comm : "")
            .str("protocol", from.tcp ? "tcp" : "udp")
            .end();
        audit->write(j.take());
    };
    sb->responder = std::make_unique<dns::Responder>(io_, cfg, sb->view(opts_), *sb, hook);
    sb->responder->start();
    uint16_t port = sb->responder->port();
    try {
        dns::ResponderConfig cfg6 = cfg;
        cfg6.listen = asio::ip::make_address("::1");
        cfg6.port = port;
        sb->responder6 = std::make_unique<dns::Responder>(io_, cfg6, sb->view(opts_), *sb, hook);
        sb->responder6->start();
    } catch (const std::exception& e) {
        sb->responder6.reset();
        spdlog::warn("no IPv6 DNS listener for cgroup {} ({}); IPv6 resolvers will fail closed", cgroup_id, e.what());
    }
    sandboxes_[cgroup_id] = std::move(sb);
    return port;
}

void DnsService::update(uint64_t cgroup_id, std::shared_ptr<const policy::CompiledPolicy> compiled,
                        uint32_t policy_id) {
    auto it = sandboxes_.find(cgroup_id);
    if (it == sandboxes_.end()) return;
    auto& sb = *it->second;
    {
        std::lock_guard lk(sb.mu);
        sb.compiled = std::move(compiled);
        sb.policy_id = policy_id;
    }
    sb.responder->set_view(sb.view(opts_));
    if (sb.responder6) sb.responder6->set_view(sb.view(opts_));
    sb.revalidate();
}

void DnsService::remove(uint64_t cgroup_id) {
    auto it = sandboxes_.find(cgroup_id);
    if (it == sandboxes_.end()) return;
    it->second->stop();
    sandboxes_.erase(it);
    dp_.delete_dns_allow_for(cgroup_id);
}

uint16_t DnsService::port(uint64_t cgroup_id) const {
    auto it = sandboxes_.find(cgroup_id);
    return it == sandboxes_.end() ? 0 : it->second->responder->port();
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
    for (auto& [id, sb] : sandboxes_) {
        std::lock_guard lk(sb->mu);
        for (auto it = sb->admitted.begin(); it != sb->admitted.end();) {
            if (it->second.expires_ns <= now) {
                sb->bpf_delete(sb->key_for(it->first));
                it = sb->admitted.erase(it);
            } else {
                ++it;
            }
        }
    }
}

}  // namespace redir::agent
