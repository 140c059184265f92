#pragma once
// A sandbox's egress in the agent's namespace, through libnftables: allowed
// traffic leaving the veth is masqueraded (IPv4 and IPv6), and the sandbox
// reaches nothing of the host but the agent's address(es), and no other sandbox.
#include <memory>
#include <string>

struct nft_ctx;

namespace redir::netns {

struct EgressPlan {
    std::string table;       // nftables table name, unique per sandbox
    std::string host_if;     // host end of the sandbox's veth
    std::string subnet;      // sandbox subnet (IPv4 CIDR), masqueraded when it leaves by another interface
    std::string agent_addr;  // the one local address the sandbox may reach (redirect target)
    std::string pool;        // every sandbox subnet: forwarding into it from the sandbox is dropped
    // IPv6, all empty when the sandbox has none (then every IPv6 packet from it is dropped).
    std::string subnet6;      // its /64
    std::string agent_addr6;  // the agent's IPv6 address on the veth
    std::string pool6;        // every sandbox /64
};

// The nftables text of PLAN: one table (family inet: both IP versions), three
// chains (input, forward, postrouting).
std::string egress_ruleset(const EgressPlan& plan, bool kernel_owned);

class Masquerade {
public:
    // Installs the table in the calling thread's namespace. Where the kernel
    // supports it (5.12+) the table is an nftables "owner" table: the kernel
    // removes it when this process dies, even by SIGKILL.
    explicit Masquerade(const EgressPlan& plan);
    ~Masquerade();  // deletes the table

    bool kernel_owned() const { return kernel_owned_; }
    const std::string& table() const { return table_; }

private:
    std::unique_ptr<nft_ctx, void (*)(nft_ctx*)> ctx_;  // its netlink socket owns the table
    std::string table_;
    bool kernel_owned_ = false;
};

// Runs nftables COMMANDS with a fresh context; returns "" or nft's error text.
std::string nft_run(const std::string& commands);
// `nft list tables` output (tests and diagnostics).
std::string nft_list_tables();

}  // namespace redir::netns
