#pragma once
// The node agent's state machine: policies, attachments and the kernel maps
// they compile to. Runs on the agent's io_context thread; the control API,
// event reader and listeners call into it.
#include <boost/asio/io_context.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "agent/audit_log.hpp"
#include "agent/dns_service.hpp"
#include "agent/control_server.hpp"
#include "agent/gateway_limits.hpp"
#include "agent/policy_registry.hpp"
#include "agent/state_store.hpp"
#include "control/dispatcher.hpp"
#include "enforce/sandboxes.hpp"
#include "loader/datapath.hpp"
#include "terminator/sandbox_inference.hpp"

namespace redir::agent {

struct AgentOptions {
    std::string state_dir = "/var/lib/redir";
    std::string run_dir = "/run/redir";
    std::string bpffs_dir = "/sys/fs/bpf/redir";
    std::string inference_vip = "198.18.0.1";
    std::string inference_vip6;  // inference.local's IPv6 address; empty: none (no AAAA)
    std::string dns_upstream;  // empty: first nameserver of /etc/resolv.conf
    std::string audit_log;     // empty: <state_dir>/audit.log
    std::string metrics;       // ADDR:PORT for Prometheus text; empty: off
    unsigned stream_idle_timeout_s = 120;  // silence allowed between two pieces of a streamed answer
    AuditOptions audit;                    // rotation, rate limit, tail
    DnsOptions dns;                        // limits of the DNS responders (upstream and VIP set by start())
    size_t fd_reserve = 32;                // descriptors kept for the control socket and state writes
    GatewayLimits gateway_limits;          // terminator and relay caps and timeouts
};

class InferenceService;
class UsageLedger;
class JsonOut;
class DnsService;
class MetricsServer;

class Agent {
public:
    Agent(boost::asio::io_context& io, AgentOptions opts);
    ~Agent();

    // Checks the kernel, loads/adopts the datapath, restores policies and
    // attachments, opens listeners and the control socket.
    void start();

    std::string handle(const std::string& request_line, const std::shared_ptr<ControlConn>& conn);

    AuditLog& audit() { return *audit_; }
    loader::Datapath& datapath() { return *dp_; }

private:
    // One handler per command of control::Request (the dispatch table).
    control::StatusReply cmd_status(const control::StatusRequest&);
    control::AttachReply cmd_attach(const control::AttachRequest& req);
    void serve_target(const enforce::RedirectTarget& t);
    void unserve_target(const enforce::RedirectTarget& t);
    control::DetachReply cmd_detach(const control::DetachRequest& req);
    control::PolicyLoadReply cmd_policy_load(const control::PolicyLoadRequest& req);
    control::PolicyShowReply cmd_policy_show(const control::PolicyShowRequest& req);
    control::PolicyListReply cmd_policy_list(const control::PolicyListRequest&);
    control::PolicyDeleteReply cmd_policy_delete(const control::PolicyDeleteRequest& req);
    control::EventsReply cmd_events(const control::EventsRequest& req, const std::shared_ptr<ControlConn>& conn);
    control::UsageReply cmd_usage(const control::UsageRequest& req);
    // Names the attached sandboxes in the ledger and writes it if it changed.
    void flush_usage();
    void serve_commands();

    // After a flip: resets what policy NAME no longer allows (agent/revoke.hpp),
    // one audit record per connection; fills the reply's revoked, kept, revocation_unsupported.
    void revoke_for(const std::string& name, control::PolicyLoadReply& reply);
    void restore();
    void schedule_housekeeping();
    void on_event(const redir_event& e);
    // State, run and bpffs directories root-only; refuses to start otherwise.
    void secure_private_dirs();
    // Why process PID may not use the control API (it is inside a sandbox).
    std::optional<std::string> control_peer_refusal(pid_t pid);
    // Refills inference_table_ from policies_ and the sandboxes (after every change of either).
    void publish_sandbox_inference();
    std::vector<std::string> route_users(const std::string& route) const;
    static std::vector<control::CapableProcess> capable_of(const std::string& cgroup);

    boost::asio::io_context& io_;
    AgentOptions opts_;
    std::unique_ptr<loader::Datapath> dp_;
    std::unique_ptr<StateStore> store_;
    std::unique_ptr<AuditLog> audit_;
    control::Dispatcher commands_;
    std::unique_ptr<ControlServer> control_;
    struct Listeners;
    std::unique_ptr<Listeners> listeners_;
    std::unique_ptr<UsageLedger> usage_;  // before inference_: the terminator records into it until it stops
    std::unique_ptr<InferenceService> inference_;
    // What the terminator's threads read per request; shared with them.
    std::shared_ptr<terminator::SandboxInferenceTable> inference_table_ =
        std::make_shared<terminator::SandboxInferenceTable>();
    std::unique_ptr<DnsService> dns_;
    std::unique_ptr<MetricsServer> metrics_;
    std::string render_metrics();

    std::unique_ptr<PolicyRegistry> policies_;  // after dp_ and store_
    std::unique_ptr<enforce::Sandboxes> sandboxes_;  // every attached sandbox; after dns_ and dp_
    uint64_t netns_cookie_ = 0;
    std::chrono::steady_clock::time_point started_;
    std::unique_ptr<boost::asio::steady_timer> housekeeping_;
    std::map<uint64_t, uint64_t> drops_seen_;  // per sandbox: kernel events lost, as last reported
    void report_event_drops();
};

}  // namespace redir::agent
