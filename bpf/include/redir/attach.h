/* Map redir_attach: HASH  cgroup id -> attachment. One entry per attached
 * sandbox cgroup; processes in descendants use the nearest attached ancestor. */
#ifndef REDIR_ATTACH_H
#define REDIR_ATTACH_H
#include "types.h"

#define REDIR_MAX_ATTACHMENTS 4096
/* Deepest cgroup level searched for an attached ancestor. */
#define REDIR_MAX_CGROUP_DEPTH 32

struct redir_attach_key {
	__u64 cgroup_id;
};

#define REDIR_ATTACH_F_INFERENCE (1u << 0) /* policy's inference.enabled */

struct redir_attach_val {
	/* Flipped by the agent with one map update when a policy is reloaded: a
	 * connect() sees either the old policy or the new one, never a mix. */
	__u32 policy_id;
	__u32 flags;
	__u16 dns_port;  /* this sandbox's DNS responder port (identifies the sandbox); 0 = none */
	__u16 _pad;
	__u32 _pad2;
	/* Where this sandbox's redirects land: an agent address reachable from
	 * the sandbox's network namespace (v4-mapped, and v6). All zero: the
	 * config's terminator4/terminator6 (the agent's loopback, for sandboxes
	 * that share its namespace). A family whose target is zero while the
	 * other is set has no agent address: its redirects fail closed. */
	struct redir_addr target4;
	struct redir_addr target6;
	/* Read by the agent only, so a restarted agent re-opens the listeners of
	 * each target from the pinned map: the sandbox's namespace (0: the
	 * agent's own) and the agent-side interface holding the targets. */
	__u64 netns_cookie;
	__u32 target_ifindex;
	/* The host-side interface of the sandbox's link whose ingress the guard
	 * (guard.bpf.c) filters; 0: no guard (the sandbox shares the agent's
	 * namespace). Kept here so a restarted agent re-attaches it. */
	__u32 guard_ifindex;
};

#endif
