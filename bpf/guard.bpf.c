// SPDX-License-Identifier: GPL-2.0
/* Node-side guard: the ingress of the host side of a sandbox's link (attach
 * --netns) judges every packet the sandbox sends with the same decision
 * connect()/sendmsg() use (redir/decide.h), under that sandbox's policy.
 *
 * Why: root of a user namespace that owns the sandbox's network namespace can
 * open an AF_PACKET socket (CAP_NET_RAW there) and hand the link a datagram no
 * socket-address hook ever saw; where the lsm_cgroup program cannot load,
 * only the node can stop it. A filter inside the sandbox's namespace would be
 * bypassable (PACKET_QDISC_BYPASS), this one is not.
 *
 * What passes: packets to the agent's addresses on the sandbox's side (every
 * redirected flow and DNS to its responder arrive rewritten to them), ARP and
 * IPv6 neighbour discovery, and TCP/UDP the policy ALLOWs. Everything else is
 * dropped, audited like a refused connect(): destinations connect() would
 * have redirected (they arrive unrewritten only when the hooks were
 * bypassed), other protocols, and what cannot be parsed whole (fragments, IP
 * options, IPv6 extension headers, VLAN tags, non-IP). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "redir/maps.h"
#include "redir/decide.h"
#include "redir/guard.h"

char LICENSE[] SEC("license") = "GPL";

/* The same numbers mean the same in tcx and in classic tc (direct action):
 * -1 hands the packet on (the next program, else the stack), 2 drops it. */
#define GUARD_PASS -1
#define GUARD_DROP 2

#define GUARD_AF_INET 2
#define GUARD_AF_INET6 10
#define GUARD_ETH_HLEN 14
#define GUARD_ETH_P_IP 0x0800
#define GUARD_ETH_P_ARP 0x0806
#define GUARD_ETH_P_IPV6 0x86DD
#define GUARD_PROTO_ICMPV6 58
#define GUARD_IP_FRAGMENT 0x3fff /* MF flag and fragment offset */
#define GUARD_ND_FIRST 133       /* router solicitation .. redirect */
#define GUARD_ND_LAST 137

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, REDIR_MAX_GUARDS);
	__type(key, __u32);
	__type(value, struct redir_guard_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} guard_map SEC(".maps");

/* What the guard read of one packet. */
struct guard_packet {
	struct redir_addr dst;
	__u16 port;   /* host order; 0 for protocols without ports */
	__u8 proto;
	__u8 family;
};

/* The event the agent writes to the audit log as event "forwarded": no task
 * runs here, so it names the attached sandbox's cgroup, not a process. */
static __always_inline void emit_forwarded(const struct decision *d, const struct guard_packet *p)
{
	struct redir_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(REDIR_CNT_EVENTS_DROPPED);
		count_drop(d->attach_cg);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_boot_ns();
	e->cgroup_id = d->attach_cg;
	e->policy_id = d->policy_id;
	e->kind = REDIR_EV_FORWARDED;
	e->verdict = REDIR_VERDICT_DENY;
	e->reason = d->reason;
	__builtin_memcpy(e->addr.b, p->dst.b, 16);
	e->port = p->port;
	e->proto = p->proto;
	e->family = p->family;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline int drop(struct decision *d, const struct guard_packet *p, __u8 reason)
{
	d->verdict = REDIR_VERDICT_DENY;
	d->reason = reason;
	count(REDIR_CNT_GUARD_DROP);
	emit_forwarded(d, p);
	return GUARD_DROP;
}

/* Fills P from the packet. Returns 1 to judge it, 0 to pass it (ARP, ND),
 * -1 when it cannot be judged whole (dropped). */
static __always_inline int parse(struct __sk_buff *skb, struct guard_packet *p)
{
	if (skb->vlan_present)
		return -1; /* a tag the stack may strip and route on: not judged, dropped */
	__u16 eth_proto;
	if (bpf_skb_load_bytes(skb, 12, &eth_proto, sizeof(eth_proto)))
		return -1;
	__u32 l4;
	if (eth_proto == bpf_htons(GUARD_ETH_P_ARP))
		return 0;
	if (eth_proto == bpf_htons(GUARD_ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, GUARD_ETH_HLEN, &ip, sizeof(ip)))
			return -1;
		p->family = GUARD_AF_INET;
		p->proto = ip.protocol;
		addr_from_v4(&p->dst, ip.daddr);
		if (ip.version != 4 || ip.ihl != 5 || (ip.frag_off & bpf_htons(GUARD_IP_FRAGMENT)))
			return -1; /* options (source routes) or a fragment: no reliable ports */
		l4 = GUARD_ETH_HLEN + sizeof(ip);
	} else if (eth_proto == bpf_htons(GUARD_ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, GUARD_ETH_HLEN, &ip6, sizeof(ip6)))
			return -1;
		p->family = GUARD_AF_INET6;
		p->proto = ip6.nexthdr;
		addr_from_v6(&p->dst, ip6.daddr.in6_u.u6_addr32);
		if (ip6.version != 6)
			return -1;
		l4 = GUARD_ETH_HLEN + sizeof(ip6);
		if (ip6.nexthdr == GUARD_PROTO_ICMPV6) {
			__u8 type;
			if (bpf_skb_load_bytes(skb, l4, &type, 1))
				return -1;
			if (type >= GUARD_ND_FIRST && type <= GUARD_ND_LAST)
				return 0; /* the link needs neighbour discovery */
		}
	} else {
		return -1;
	}
	if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) {
		__u16 port;
		if (bpf_skb_load_bytes(skb, l4 + 2, &port, sizeof(port)))
			return -1;
		p->port = bpf_ntohs(port);
	}
	return 1;
}

SEC("tc")
int redir_guard(struct __sk_buff *skb)
{
	__u32 zero = 0, ifindex = skb->ifindex;
	struct guard_packet p = {};
	struct decision d = { .verdict = REDIR_VERDICT_DENY, .reason = REDIR_REASON_NO_ATTACHMENT };
	int parsed = parse(skb, &p);
	if (parsed == 0)
		return GUARD_PASS;

	/* Attached but no entry: the agent is mid-detach or the map is damaged. */
	struct redir_guard_val *g = bpf_map_lookup_elem(&guard_map, &ifindex);
	if (!g)
		return drop(&d, &p, REDIR_REASON_NO_ATTACHMENT);
	d.attach_cg = g->cgroup_id;
	struct redir_attach_key k = { .cgroup_id = g->cgroup_id };
	struct redir_attach_val *att = bpf_map_lookup_elem(&attach_map, &k);
	const struct redir_config *cfg = bpf_map_lookup_elem(&cfg_map, &zero);
	if (!att || !cfg)
		return drop(&d, &p, REDIR_REASON_NO_ATTACHMENT);
	d.policy_id = att->policy_id;
	if (parsed < 0)
		return drop(&d, &p, REDIR_REASON_UNPARSED);

	/* Redirected flows and DNS arrive rewritten to the agent's own address on
	 * this side; its listeners and responder judge them (original destination
	 * records, per-sandbox binding). */
	if ((!addr_is_zero(&att->target4) && addr_eq(&p.dst, &att->target4)) ||
	    (!addr_is_zero(&att->target6) && addr_eq(&p.dst, &att->target6)))
		return GUARD_PASS;
	if (p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP)
		return drop(&d, &p, REDIR_REASON_POLICY);
	/* Loopback never arrives from a link for real (connect()'s own-namespace
	 * loopback rule does not apply here). */
	if (redir_is_loopback(&p.dst))
		return drop(&d, &p, REDIR_REASON_LOOPBACK);

	decide(cfg, att, d.attach_cg, &p.dst, p.port, p.proto, true, &d);
	if (d.verdict == REDIR_VERDICT_ALLOW)
		return GUARD_PASS;
	/* connect() would have rewritten it to the agent: it left unrewritten. */
	if (d.verdict == REDIR_VERDICT_REDIRECT)
		return drop(&d, &p, REDIR_REASON_UNREDIRECTED);
	return drop(&d, &p, d.reason);
}
