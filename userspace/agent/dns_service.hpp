#pragma once
// One DNS responder per attached sandbox (the port a query arrives on tells
// which sandbox asked), wired to the policy compiler for decisions and to the
// kernel's redir_dns_allow map for admissions.
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "agent/admission_journal.hpp"
#include "common/cidr.hpp"
#include "enforce/sandbox.hpp"
#include "redir/dns.h"

namespace redir::policy {
struct CompiledPolicy;
}
namespace redir::loader {
class Datapath;
}
namespace redir::dns {
class ConnectionBudget;
}

namespace redir::agent {

class AuditLog;
class OwnerLookups;

struct DnsOptions {
    std::string upstream;            // "IP:PORT" or "IP"; empty: first nameserver of /etc/resolv.conf
    std::array<uint8_t, 4> vip4{198, 18, 0, 1};
    std::optional<Addr> vip6;  // inference.local's AAAA (redird --inference-vip6)
    uint32_t ttl_floor_s = 5;
    uint32_t ttl_ceiling_s = 3600;
    // Names behind live admissions (see AdmissionJournal); empty: a restart
    // withdraws every DNS admission instead of re-keying it.
    std::string journal_path;
    // Live admissions one sandbox may hold in the node-wide redir_dns_allow
    // map (REDIR_MAX_DNS_ALLOW entries); past it: SERVFAIL and a `quota` record.
    size_t max_admissions_per_sandbox = 16384;
    size_t tcp_per_sandbox = 64;     // DNS-over-TCP connections, both families together
    size_t tcp_total = 1024;         // node-wide
    size_t tcp_queued_bytes = 64 * 1024;
    std::chrono::milliseconds tcp_idle_timeout{10000};
    size_t owner_lookup_queue = 64;  // refusal records waiting for their pid
    std::function<bool()> accept_allowed;  // false: file descriptors are short
};

struct DnsCounters {
    uint64_t queries = 0, refused = 0, admissions = 0;
    uint64_t quota_refusals = 0;
    uint64_t tcp_open = 0, tcp_refused = 0, tcp_cut = 0, accept_backoffs = 0;
    uint64_t owner_lookups = 0, owner_lookups_skipped = 0;
    uint64_t admissions_live = 0, restored = 0, restore_withdrawn = 0, journal_errors = 0;
};

class DnsService final : public enforce::SandboxDns {
public:
    DnsService(boost::asio::io_context& io, loader::Datapath& dp, AuditLog& audit, DnsOptions opts);
    ~DnsService() override;

    // Starts the responder for an attachment and returns its port.
    // CGROUP_PATH names the querying process in refusal records.
    uint16_t add(uint64_t cgroup_id, const std::string& cgroup_path,
                 std::shared_ptr<const policy::CompiledPolicy> compiled, uint32_t policy_id,
                 const enforce::RedirectTarget& target) override;
    // Policy reload: new decisions, and every address admitted so far is
    // re-checked against the new policy (kept with the new id, or removed).
    void update(uint64_t cgroup_id, std::shared_ptr<const policy::CompiledPolicy> compiled,
                uint32_t policy_id) override;
    void remove(uint64_t cgroup_id) override;
    uint16_t port(uint64_t cgroup_id) const;
    std::string upstream() const { return upstream_; }

    // Restart: call right after the sandbox's attachment was flipped to its
    // new policy id, before old ids are deleted. Every live kernel admission
    // of the sandbox (left by the previous agent) is re-decided under the new
    // policy with the journal's name: rewritten under the new id with its
    // expiry, or removed.
    void adopt_admissions(uint64_t cgroup_id) override;
    // Restart, after every sandbox was adopted: removes admissions of
    // cgroups that are no longer attached and compacts the journal.
    void finish_restore() override;

    DnsCounters counters() const;

    struct Sandbox;

private:
    void schedule_expiry();
    void expire();
    void compact_journal();

    boost::asio::io_context& io_;
    loader::Datapath& dp_;
    AuditLog& audit_;
    DnsOptions opts_;
    std::string upstream_;
    AdmissionJournal journal_;
    // Kernel admissions found at start, by cgroup, until finish_restore().
    std::map<uint64_t, std::vector<std::pair<redir_dns_allow_key, redir_dns_allow_val>>> inherited_;
    AdmissionJournal::Names inherited_names_;
    std::shared_ptr<dns::ConnectionBudget> tcp_total_;
    std::unique_ptr<OwnerLookups> owners_;
    std::map<uint64_t, std::shared_ptr<Sandbox>> sandboxes_;
    DnsCounters retired_;  // counters of removed sandboxes, so totals never go back
    uint64_t restored_ = 0, restore_withdrawn_ = 0;
    boost::asio::steady_timer expiry_timer_;
};

// First "nameserver" of /etc/resolv.conf as IP:53, or 127.0.0.1:53.
std::string default_dns_upstream();

}  // namespace redir::agent
