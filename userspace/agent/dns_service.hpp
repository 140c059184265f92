#pragma once
// One DNS responder per attached sandbox (the port a query arrives on tells
// which sandbox asked), wired to the policy compiler for decisions and to the
// kernel's redir_dns_allow map for admissions.
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace redir::policy {
struct CompiledPolicy;
}
namespace redir::loader {
class Datapath;
}

namespace redir::agent {

class AuditLog;

struct DnsOptions {
    std::string upstream;            // "IP:PORT" or "IP"; empty: first nameserver of /etc/resolv.conf
    std::array<uint8_t, 4> vip4{198, 18, 0, 1};
    uint32_t ttl_floor_s = 5;
    uint32_t ttl_ceiling_s = 3600;
};

class DnsService {
public:
    DnsService(boost::asio::io_context& io, loader::Datapath& dp, AuditLog& audit, DnsOptions opts);
    ~DnsService();

    // Starts the responder for an attachment and returns its port.
    // CGROUP_PATH names the querying process in refusal records.
    uint16_t add(uint64_t cgroup_id, const std::string& cgroup_path,
                 std::shared_ptr<const policy::CompiledPolicy> compiled, uint32_t policy_id);
    // Policy reload: new decisions, and every address admitted so far is
    // re-checked against the new policy (kept with the new id, or removed).
    void update(uint64_t cgroup_id, std::shared_ptr<const policy::CompiledPolicy> compiled, uint32_t policy_id);
    void remove(uint64_t cgroup_id);
    uint16_t port(uint64_t cgroup_id) const;
    std::string upstream() const { return upstream_; }

    struct Sandbox;

private:
    void schedule_expiry();
    void expire();

    boost::asio::io_context& io_;
    loader::Datapath& dp_;
    AuditLog& audit_;
    DnsOptions opts_;
    std::string upstream_;
    std::map<uint64_t, std::unique_ptr<Sandbox>> sandboxes_;
    boost::asio::steady_timer expiry_timer_;
};

// First "nameserver" of /etc/resolv.conf as IP:53, or 127.0.0.1:53.
std::string default_dns_upstream();

}  // namespace redir::agent
