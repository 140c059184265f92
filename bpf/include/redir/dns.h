/* Map redir_dns_allow: HASH {cgroup id of the attachment, address} -> admission.
 * Written by the DNS responder for addresses a sandbox resolved through an
 * allowed `host` rule; the kernel checks the expiry itself so a stale entry
 * never admits anything even if the agent is slow to delete it. */
#ifndef REDIR_DNS_H
#define REDIR_DNS_H
#include "types.h"

#define REDIR_MAX_DNS_ALLOW 262144

struct redir_dns_allow_key {
	__u64 cgroup_id;  /* the attached cgroup (not the process's leaf cgroup) */
	struct redir_addr addr;
};

struct redir_dns_allow_val {
	__u32 policy_id;   /* only valid while this policy is the attachment's */
	__u32 portset_id;  /* port set of the host rule, in redir_portsets */
	__u64 expires_ns;  /* bpf_ktime_get_boot_ns() clock */
};

#endif
