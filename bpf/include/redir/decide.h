/* The policy decision, one source of truth for every hook that judges a
 * destination: connect/sendmsg (redir.bpf.c) and the node-side guard on a
 * sandbox's link (guard.bpf.c). BPF only; needs redir/maps.h and the
 * generated special-address table. */
#ifndef REDIR_DECIDE_H
#define REDIR_DECIDE_H
#include "redir/maps.h"
#include "redir/special_gen.h" /* generated from userspace/common/special.cpp */

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &idx);
	if (c)
		*c += 1;
}

static __always_inline void addr_from_v4(struct redir_addr *a, __u32 ip4_be)
{
	__builtin_memset(a, 0, sizeof(*a));
	a->b[10] = 0xff;
	a->b[11] = 0xff;
	__builtin_memcpy(&a->b[12], &ip4_be, 4);
}

static __always_inline void addr_from_v6(struct redir_addr *a, const __u32 w[4])
{
	__builtin_memcpy(a->b, w, 16);
}

static __always_inline bool addr_is_v4mapped(const struct redir_addr *a)
{
	const __u32 *w = (const __u32 *)a->b;
	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0x0000ffff);
}

static __always_inline bool addr_eq(const struct redir_addr *a, const struct redir_addr *b)
{
	const __u64 *x = (const __u64 *)a->b, *y = (const __u64 *)b->b;
	return x[0] == y[0] && x[1] == y[1];
}

static __always_inline bool addr_is_zero(const struct redir_addr *a)
{
	const __u64 *x = (const __u64 *)a->b;
	return x[0] == 0 && x[1] == 0;
}

struct decision {
	__u8 verdict;
	__u8 reason;
	__u16 target_port;  /* host order, for REDIRECT */
	__u32 policy_id;
	__u64 attach_cg;    /* the attached ancestor's cgroup id, 0 if none */
	const struct redir_addr *target; /* for REDIRECT; NULL = terminator address for the family */
};

static __always_inline __u8 portset_verdict(__u32 policy_id, __u32 portset_id, __u16 port, __u8 proto)
{
	struct redir_portset_key k = { .policy_id = policy_id, .portset_id = portset_id };
	struct redir_portset *ps = bpf_map_lookup_elem(&portsets, &k);
	if (!ps)
		return REDIR_VERDICT_DENY;
	for (int i = 0; i < REDIR_MAX_PORT_RANGES; i++) {
		if (i >= ps->count)
			break;
		struct redir_port_range *r = &ps->r[i];
		if (r->proto == proto && port >= r->lo && port <= r->hi)
			return r->verdict;
	}
	return REDIR_VERDICT_DENY;
}

/* Policy lookup: one LPM hit gives the effective port set of every covering
 * rule (the compiler folded them); DNS-learned addresses come second and
 * still lose to any covering deny. The node's loopback is never admitted
 * through DNS (only a cidr rule names it), whatever the agent wrote. */
static __always_inline __u8 policy_verdict(__u32 policy_id, __u64 attach_cg,
					   const struct redir_addr *dst, __u16 port, __u8 proto)
{
	struct redir_lpm_key k = { .prefixlen = REDIR_LPM_DATA_BITS, .policy_id = policy_id };
	__builtin_memcpy(k.addr, dst->b, 16);
	struct redir_lpm_val *lv = bpf_map_lookup_elem(&policy_lpm, &k);
	__u8 v = REDIR_VERDICT_DENY;
	if (lv) {
		v = portset_verdict(policy_id, lv->portset_id, port, proto);
		if (v != REDIR_VERDICT_DENY)
			return v;
	}

	if (redir_is_loopback(dst))
		return REDIR_VERDICT_DENY;
	struct redir_dns_allow_key dk = { .cgroup_id = attach_cg };
	__builtin_memcpy(dk.addr.b, dst->b, 16);
	struct redir_dns_allow_val *dv = bpf_map_lookup_elem(&dns_allow, &dk);
	if (!dv || dv->policy_id != policy_id || dv->expires_ns <= bpf_ktime_get_boot_ns())
		return REDIR_VERDICT_DENY;
	if (lv && (lv->flags & REDIR_LPM_F_HAS_DENY) &&
	    portset_verdict(policy_id, lv->deny_portset_id, port, proto) != REDIR_VERDICT_DENY)
		return REDIR_VERDICT_DENY;
	return portset_verdict(policy_id, dv->portset_id, port, proto);
}

static __always_inline void decide(const struct redir_config *cfg, const struct redir_attach_val *att,
				   __u64 attach_cg, const struct redir_addr *dst, __u16 port, __u8 proto,
				   bool own_netns, struct decision *d)
{
	d->verdict = REDIR_VERDICT_DENY;
	d->reason = REDIR_REASON_POLICY;
	d->target_port = 0;
	d->target = NULL;
	d->policy_id = att->policy_id;

	if (redir_never_reachable(dst)) {
		d->reason = REDIR_REASON_LINK_LOCAL;
		return;
	}
	if (port == 53 && att->dns_port) {
		d->verdict = REDIR_VERDICT_REDIRECT;
		d->reason = REDIR_REASON_DNS;
		d->target_port = att->dns_port;
		return;
	}
	if ((att->flags & REDIR_ATTACH_F_INFERENCE) &&
	    ((!addr_is_zero(&cfg->inference_vip4) && addr_eq(dst, &cfg->inference_vip4)) ||
	     (!addr_is_zero(&cfg->inference_vip6) && addr_eq(dst, &cfg->inference_vip6)))) {
		d->reason = REDIR_REASON_INFERENCE;
		if (proto == REDIR_PROTO_TCP && port == 443 && cfg->terminator_port) {
			d->verdict = REDIR_VERDICT_REDIRECT;
			d->target_port = cfg->terminator_port;
		} else if (proto == REDIR_PROTO_TCP && port == 80 && cfg->plain_http_port) {
			d->verdict = REDIR_VERDICT_REDIRECT;
			d->target_port = cfg->plain_http_port;
		}
		return;
	}
	/* The agent's address on the sandbox's side (its redirect target) serves
	 * redirected sockets only: a direct connect()/sendmsg() to it, whatever
	 * the port and whatever a rule says, would reach the agent's listeners
	 * and other sandboxes' responders without a redirect. */
	if ((!addr_is_zero(&att->target4) && addr_eq(dst, &att->target4)) ||
	    (!addr_is_zero(&att->target6) && addr_eq(dst, &att->target6))) {
		d->reason = REDIR_REASON_AGENT_ADDRESS;
		return;
	}
	/* A sandbox in its own network namespace only talks to itself on loopback. */
	if (own_netns && redir_is_loopback(dst)) {
		d->verdict = REDIR_VERDICT_ALLOW;
		d->reason = REDIR_REASON_LOOPBACK;
		return;
	}
	__u8 v = policy_verdict(att->policy_id, attach_cg, dst, port, proto);
	if (v == REDIR_VERDICT_REDIRECT) {
		if (proto != REDIR_PROTO_TCP || !cfg->relay_port) {
			v = REDIR_VERDICT_DENY; /* inspection is TCP only; no relay means fail closed */
		} else {
			d->target_port = cfg->relay_port;
		}
	}
	d->verdict = v;
}

/* The agent address a REDIRECT rewrites to: the attachment's own (a sandbox
 * in its own network namespace), else the agent's loopback from the config.
 * All zero: no agent address of that family; the caller fails closed. */
static __always_inline const struct redir_addr *redirect_target(const struct redir_config *cfg,
								const struct redir_attach_val *att, bool v4)
{
	if (!addr_is_zero(&att->target4) || !addr_is_zero(&att->target6))
		return v4 ? &att->target4 : &att->target6;
	return v4 ? &cfg->terminator4 : &cfg->terminator6;
}

/* Events lost because the ring buffer was full, per attached sandbox, so
 * the agent can tell which sandbox is flooding (or being starved). */
static __always_inline void count_drop(__u64 attach_cg)
{
	__u64 one = 1;
	__u64 *n = bpf_map_lookup_elem(&event_drops, &attach_cg);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(&event_drops, &attach_cg, &one, BPF_NOEXIST);
}

#endif
