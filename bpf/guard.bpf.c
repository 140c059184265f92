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
 * What passes: packets to the agent's redirect ports on its address on the
 * sandbox's side (every redirected flow and DNS to the sandbox's own
 * responder arrive rewritten to them; any other port of that address is a
 * host service the sandbox must not reach), well-formed Ethernet/IPv4 ARP,
 * IPv6 neighbour discovery that cannot leave the link (link-local or
 * link-scope multicast destination, or the agent's address; hop limit 255),
 * and TCP/UDP the policy ALLOWs. Everything else is dropped, audited like a
 * refused connect(): destinations connect() would have redirected (they
 * arrive unrewritten only when the hooks were bypassed), other protocols, and
 * what cannot be parsed whole (fragments, IP options, IPv6 extension headers,
 * VLAN tags, lengths that do not cover the ports, non-IP).
 *
 * Answers of a server inside the sandbox are packets like any other: they
 * reach a client only where the policy lets the sandbox send to that client's
 * address and port (docs/containers.md, "Inbound connections"). */
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
#define GUARD_ND_HOP_LIMIT 255   /* RFC 4861: what a router forwarded is not ND */
#define GUARD_ARP_HRD_ETHER 1
#define GUARD_ARP_REQUEST 1
#define GUARD_ARP_REPLY 2
#define GUARD_TCP_HLEN 20
#define GUARD_UDP_HLEN 8

/* What parse() found: judge it, pass it (ARP), drop it (cannot be judged
 * whole), or neighbour discovery (passes if it cannot leave the link). */
enum guard_parsed { GUARD_JUDGE, GUARD_LINK, GUARD_UNPARSED, GUARD_ND };

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

/* Ethernet/IPv4 ARP, nothing else: the frame stays on the link either way,
 * but an odd one is no neighbour resolution, only data for whoever listens. */
static __always_inline bool arp_well_formed(struct __sk_buff *skb)
{
	struct {
		__be16 hrd, pro;
		__u8 hln, pln;
		__be16 op;
	} a;
	if (bpf_skb_load_bytes(skb, GUARD_ETH_HLEN, &a, sizeof(a)))
		return false;
	return a.hrd == bpf_htons(GUARD_ARP_HRD_ETHER) && a.pro == bpf_htons(GUARD_ETH_P_IP) && a.hln == 6 &&
	       a.pln == 4 && (a.op == bpf_htons(GUARD_ARP_REQUEST) || a.op == bpf_htons(GUARD_ARP_REPLY));
}

/* Bytes of L4 header that must lie inside the IP payload before its ports
 * are believed (the stack trims the frame to the IP length; ports read from
 * beyond it would be padding). */
static __always_inline __u32 l4_header_len(__u8 proto)
{
	return proto == IPPROTO_TCP ? GUARD_TCP_HLEN : proto == IPPROTO_UDP ? GUARD_UDP_HLEN : 0;
}

/* Fills P from the packet and says what to do with it (enum guard_parsed);
 * a tag the stack stripped is not looked at (see parse()). */
static __always_inline int parse_frame(struct __sk_buff *skb, struct guard_packet *p)
{
	__u16 eth_proto;
	if (bpf_skb_load_bytes(skb, 12, &eth_proto, sizeof(eth_proto)))
		return GUARD_UNPARSED;
	__u32 l4;
	if (eth_proto == bpf_htons(GUARD_ETH_P_ARP))
		return arp_well_formed(skb) ? GUARD_LINK : GUARD_UNPARSED;
	if (eth_proto == bpf_htons(GUARD_ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, GUARD_ETH_HLEN, &ip, sizeof(ip)))
			return GUARD_UNPARSED;
		p->family = GUARD_AF_INET;
		p->proto = ip.protocol;
		addr_from_v4(&p->dst, ip.daddr);
		if (ip.version != 4 || ip.ihl != 5 || (ip.frag_off & bpf_htons(GUARD_IP_FRAGMENT)))
			return GUARD_UNPARSED; /* options (source routes) or a fragment: no reliable ports */
		if (bpf_ntohs(ip.tot_len) < sizeof(ip) + l4_header_len(ip.protocol))
			return GUARD_UNPARSED;
		l4 = GUARD_ETH_HLEN + sizeof(ip);
	} else if (eth_proto == bpf_htons(GUARD_ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, GUARD_ETH_HLEN, &ip6, sizeof(ip6)))
			return GUARD_UNPARSED;
		p->family = GUARD_AF_INET6;
		p->proto = ip6.nexthdr;
		addr_from_v6(&p->dst, ip6.daddr.in6_u.u6_addr32);
		if (ip6.version != 6)
			return GUARD_UNPARSED;
		if (bpf_ntohs(ip6.payload_len) < l4_header_len(ip6.nexthdr))
			return GUARD_UNPARSED;
		l4 = GUARD_ETH_HLEN + sizeof(ip6);
		if (ip6.nexthdr == GUARD_PROTO_ICMPV6) {
			__u8 type;
			if (bpf_skb_load_bytes(skb, l4, &type, 1))
				return GUARD_UNPARSED;
			/* An ND type is no passport: to a routed destination it is
			 * just an ICMPv6 packet leaving the node. */
			if (type >= GUARD_ND_FIRST && type <= GUARD_ND_LAST && ip6.hop_limit == GUARD_ND_HOP_LIMIT)
				return GUARD_ND;
		}
	} else {
		return GUARD_UNPARSED;
	}
	if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) {
		__u16 port;
		__u8 last;
		if (bpf_skb_load_bytes(skb, l4 + 2, &port, sizeof(port)) ||
		    bpf_skb_load_bytes(skb, l4 + l4_header_len(p->proto) - 1, &last, 1))
			return GUARD_UNPARSED; /* the frame ends inside the L4 header */
		p->port = bpf_ntohs(port);
	}
	return GUARD_JUDGE;
}

/* A tag the stack may strip and route on (a VLAN device on the bridge) is
 * not judged: the frame is dropped, its addresses read only for the audit. */
static __always_inline int parse(struct __sk_buff *skb, struct guard_packet *p)
{
	int parsed = parse_frame(skb, p);
	return skb->vlan_present ? GUARD_UNPARSED : parsed;
}

/* fe80::/10 and the link-scope multicast ff02::/16: no router forwards them. */
static __always_inline bool stays_on_link(const struct redir_addr *a)
{
	return (a->b[0] == 0xfe && (a->b[1] & 0xc0) == 0x80) || (a->b[0] == 0xff && (a->b[1] & 0x0f) == 0x02);
}

static __always_inline bool is_target(const struct redir_attach_val *att, const struct redir_addr *a)
{
	return (!addr_is_zero(&att->target4) && addr_eq(a, &att->target4)) ||
	       (!addr_is_zero(&att->target6) && addr_eq(a, &att->target6));
}

/* The ports a redirect rewrites to (decide.h): the agent's listeners, and
 * this sandbox's own DNS responder (another sandbox's is not its business). */
static __always_inline bool agent_service(const struct redir_config *cfg, const struct redir_attach_val *att,
					  const struct guard_packet *p)
{
	if (p->port == 0)
		return false;
	if (p->port == att->dns_port)
		return p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP;
	return p->proto == IPPROTO_TCP &&
	       (p->port == cfg->terminator_port || p->port == cfg->plain_http_port || p->port == cfg->relay_port);
}

SEC("tc")
int redir_guard(struct __sk_buff *skb)
{
	__u32 zero = 0, ifindex = skb->ifindex;
	struct guard_packet p = {};
	struct decision d = { .verdict = REDIR_VERDICT_DENY, .reason = REDIR_REASON_NO_ATTACHMENT };
	int parsed = parse(skb, &p);
	if (parsed == GUARD_LINK)
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
	if (parsed == GUARD_UNPARSED)
		return drop(&d, &p, REDIR_REASON_UNPARSED);
	if (parsed == GUARD_ND) {
		if (stays_on_link(&p.dst) || is_target(att, &p.dst))
			return GUARD_PASS;
		return drop(&d, &p, REDIR_REASON_POLICY);
	}

	/* Redirected flows and DNS arrive rewritten to the agent's own address on
	 * this side; its listeners and responder judge them (original destination
	 * records, per-sandbox binding). Other ports there: decide() refuses. */
	if (is_target(att, &p.dst) && agent_service(cfg, att, &p))
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
