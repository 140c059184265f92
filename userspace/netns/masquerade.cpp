// A sandbox's egress in the agent's namespace through libnftables.
#include "masquerade.hpp"

#include <nftables/libnftables.h>

#include "common/error.hpp"

namespace redir::netns {
namespace {

using Ctx = std::unique_ptr<nft_ctx, void (*)(nft_ctx*)>;

Ctx new_ctx() {
    Ctx c(nft_ctx_new(NFT_CTX_DEFAULT), nft_ctx_free);
    if (!c) throw Error("cannot create an nftables context (libnftables): out of memory");
    nft_ctx_buffer_output(c.get());
    nft_ctx_buffer_error(c.get());
    return c;
}

std::string run(nft_ctx* c, const std::string& commands) {
    if (nft_run_cmd_from_buffer(c, commands.c_str()) == 0) return "";
    const char* e = nft_ctx_get_error_buffer(c);
    return e && *e ? e : "nftables refused the commands";
}

std::string quoted(const std::string& s) { return "\"" + s + "\""; }

}  // namespace

std::string egress_ruleset(const EgressPlan& p, bool kernel_owned) {
    const std::string t = "inet " + p.table;
    const std::string vif = quoted(p.host_if);
    const bool v6 = !p.subnet6.empty();
    const std::string from = "add rule " + t + " input iifname " + vif + " ";
    const std::string via = "add rule " + t + " forward iifname " + vif + " ";
    std::string r;
    r += "add table " + t + (kernel_owned ? " { flags owner; }\n" : "\n");
    // Only the agent's address(es) of this host: not its other addresses,
    // not its link-local one; and only from the sandbox's own addresses
    // (a forged source would make the agent answer someone else).
    r += "add chain " + t + " input { type filter hook input priority filter; }\n";
    r += from + "ip saddr != " + p.subnet + " drop\n";
    r += from + "ip daddr != " + p.agent_addr + " drop\n";
    if (v6) {
        // Neighbour discovery is how the sandbox finds the agent's address
        // at all; the kernel alone sends it (the sandbox opens no ICMPv6 socket).
        r += from + "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept\n";
        r += from + "ip6 saddr != " + p.subnet6 + " drop\n";
        r += from + "ip6 daddr != " + p.agent_addr6 + " drop\n";
    } else {
        r += from + "meta nfproto ipv6 drop\n";
    }
    // Out: only from its own addresses (masquerading covers nothing else),
    // never into another sandbox. In: only answers to what it started.
    r += "add chain " + t + " forward { type filter hook forward priority filter; }\n";
    r += via + "ip saddr != " + p.subnet + " drop\n";
    r += via + "ip daddr " + p.pool + " drop\n";
    if (v6) {
        r += via + "ip6 saddr != " + p.subnet6 + " drop\n";
        r += via + "ip6 daddr " + p.pool6 + " drop\n";
    } else {
        r += via + "meta nfproto ipv6 drop\n";
    }
    r += "add rule " + t + " forward oifname " + vif + " ct state != { established, related } drop\n";
    r += "add chain " + t + " postrouting { type nat hook postrouting priority srcnat; }\n";
    r += "add rule " + t + " postrouting ip saddr " + p.subnet + " oifname != " + vif + " masquerade\n";
    if (v6) r += "add rule " + t + " postrouting ip6 saddr " + p.subnet6 + " oifname != " + vif + " masquerade\n";
    return r;
}

Masquerade::Masquerade(const EgressPlan& plan) : ctx_(new_ctx()), table_(plan.table) {
    std::string err = run(ctx_.get(), egress_ruleset(plan, true));
    kernel_owned_ = err.empty();
    // Kernels before 5.12 have no owner tables: a plain one, removed by the
    // destructor only (a SIGKILLed run leaves it; `nft delete table` ends it).
    if (!kernel_owned_) err = run(ctx_.get(), egress_ruleset(plan, false));
    if (!err.empty())
        throw Error("cannot install the nftables masquerade table " + plan.table + " for " + plan.host_if + ": " + err +
                    " (is nf_tables built into this kernel or its module loaded?)");
}

Masquerade::~Masquerade() { run(ctx_.get(), "delete table inet " + table_ + "\n"); }

std::string nft_run(const std::string& commands) {
    Ctx c = new_ctx();
    return run(c.get(), commands);
}

std::string nft_list_tables() {
    Ctx c = new_ctx();
    if (!run(c.get(), "list tables").empty()) return "";
    const char* out = nft_ctx_get_output_buffer(c.get());
    return out ? out : "";
}

}  // namespace redir::netns
