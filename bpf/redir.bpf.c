// SPDX-License-Identifier: GPL-2.0
/* redir kernel datapath: every socket a sandboxed process opens is decided here.
 *
 * Attached per sandbox cgroup through bpf_link. Verdicts come from maps the
 * agent owns (see the headers in include/redir for every layout); the decision itself is
 * in small inline functions so each hook is a thin adapter. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>

#include "redir/maps.h"   /* every map, shared with guard.bpf.c through the pins */
#include "redir/decide.h" /* the policy decision, shared with guard.bpf.c */

char LICENSE[] SEC("license") = "GPL";

#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define AF_NETLINK 16
#define SOCK_STREAM 1
#define SOCK_DGRAM 2

/* cgroup hooks: 1 lets the call proceed, 0 fails it with EPERM. */
#define CG_ALLOW 1
#define CG_DENY 0

/* Nearest attached ancestor of the calling task's cgroup (programs attached to
 * a cgroup also run for its descendants). */
static __always_inline struct redir_attach_val *find_attachment(__u64 *attach_cg)
{
	struct redir_attach_key k = { .cgroup_id = bpf_get_current_cgroup_id() };
	struct redir_attach_val *v = bpf_map_lookup_elem(&attach_map, &k);
	if (v) {
		*attach_cg = k.cgroup_id;
		return v;
	}
	for (int level = REDIR_MAX_CGROUP_DEPTH - 1; level >= 0; level--) {
		k.cgroup_id = bpf_get_current_ancestor_cgroup_id(level);
		if (!k.cgroup_id)
			continue;
		v = bpf_map_lookup_elem(&attach_map, &k);
		if (v) {
			*attach_cg = k.cgroup_id;
			return v;
		}
	}
	return NULL;
}

/* A reserved event with the fields every kind shares, or NULL (counted).
 * BASIC leaves out pid and comm (helpers some program types lack on old kernels). */
static __always_inline struct redir_event *event_begin_from(__u8 kind, const struct decision *d, bool basic)
{
	struct redir_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(REDIR_CNT_EVENTS_DROPPED);
		count_drop(d->attach_cg);
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_boot_ns();
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->policy_id = d->policy_id;
	if (!basic) {
		e->pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(e->comm, sizeof(e->comm));
	}
	e->kind = kind;
	e->verdict = d->verdict;
	e->reason = d->reason;
	return e;
}

static __always_inline struct redir_event *event_begin(__u8 kind, const struct decision *d)
{
	return event_begin_from(kind, d, false);
}

/* A connect()/sendmsg() verdict for the audit log. */
static __always_inline void emit(__u8 kind, const struct decision *d, const struct redir_addr *dst,
				 __u16 port, __u8 proto, __u8 family)
{
	struct redir_event *e = event_begin(kind, d);
	if (!e)
		return;
	__builtin_memcpy(e->addr.b, dst->b, 16);
	e->port = port;
	e->proto = proto;
	e->family = family;
	bpf_ringbuf_submit(e, 0);
}

/* socket() refusals carry no destination; the full protocol number (MPTCP is
 * 262) goes in sock_protocol. */
static __always_inline void emit_socket(const struct decision *d, int family, int type, int protocol)
{
	struct redir_event *e = event_begin(REDIR_EV_SOCKET, d);
	if (!e)
		return;
	e->proto = (__u8)protocol;
	e->family = (__u8)family;
	e->sock_type = (__u8)type;
	e->sock_protocol = (__u16)protocol;
	bpf_ringbuf_submit(e, 0);
}

/* A refused setsockopt(): the level in proto, the option in sock_protocol. */
static __always_inline void emit_sockopt(const struct decision *d, int family, int level, int optname,
					bool basic)
{
	struct redir_event *e = event_begin_from(REDIR_EV_SETSOCKOPT, d, basic);
	if (!e)
		return;
	e->proto = (__u8)level;
	e->family = (__u8)family;
	e->sock_protocol = (__u16)optname;
	bpf_ringbuf_submit(e, 0);
}

/* ---- connect / sendmsg ---- */

/* Returns the cgroup verdict; rewrites the destination for REDIRECT. */
static __always_inline int handle_sock_addr(struct bpf_sock_addr *ctx, bool v6, __u8 kind)
{
	__u32 zero = 0;
	const struct redir_config *cfg = bpf_map_lookup_elem(&cfg_map, &zero);
	struct bpf_sock *sk = ctx->sk;
	if (!cfg || !sk)
		return CG_DENY;

	__u8 proto = sk->protocol == IPPROTO_UDP ? REDIR_PROTO_UDP : REDIR_PROTO_TCP;
	if (sk->protocol != IPPROTO_UDP && sk->protocol != IPPROTO_TCP)
		return CG_DENY;

	struct redir_addr dst;
	if (v6) {
		__u32 w[4] = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3] };
		addr_from_v6(&dst, w);
	} else {
		addr_from_v4(&dst, ctx->user_ip4);
	}
	__u16 port = bpf_ntohs((__u16)ctx->user_port);

	/* Nested attachments run one program per level, innermost first: the outer
	 * run sees the address the inner run already redirected to. */
	struct redir_sk_state *st = bpf_sk_storage_get(&sk_state, sk, 0, 0);
	if (st && st->verdict == REDIR_VERDICT_REDIRECT && st->target_port == port &&
	    addr_eq(&st->target_addr, &dst))
		return CG_ALLOW;

	__u64 attach_cg = 0;
	struct redir_attach_val *att = find_attachment(&attach_cg);
	struct decision d = {};
	__u64 netns_cookie = bpf_get_netns_cookie(ctx);
	if (!att) {
		/* Our program runs only in attached cgroups; no entry means the
		 * agent is mid-detach or the map is damaged. Fail closed. */
		d.verdict = REDIR_VERDICT_DENY;
		d.reason = REDIR_REASON_NO_ATTACHMENT;
	} else {
		bool own_netns = netns_cookie != cfg->agent_netns_cookie;
		decide(cfg, att, attach_cg, &dst, port, proto, own_netns, &d);
		d.attach_cg = attach_cg;
	}

	if (d.verdict == REDIR_VERDICT_ALLOW) {
		count(REDIR_CNT_ALLOW);
		if (st)
			st->verdict = REDIR_VERDICT_ALLOW; /* a reconnected UDP socket forgets an old redirect */
		return CG_ALLOW;
	}
	if (d.verdict != REDIR_VERDICT_REDIRECT) {
		count(REDIR_CNT_DENY);
		emit(kind, &d, &dst, port, proto, v6 ? AF_INET6 : AF_INET);
		return CG_DENY;
	}

	/* REDIRECT: to the agent address this sandbox's namespace reaches; the
	 * target keeps the family of the address the application used. */
	if (!att)
		return CG_DENY; /* not reached: REDIRECT needs an attachment; the verifier cannot tell */
	const struct redir_addr *target = redirect_target(cfg, att, addr_is_v4mapped(&dst));
	if (!st && !addr_is_zero(target))
		st = bpf_sk_storage_get(&sk_state, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st || addr_is_zero(target)) {
		count(REDIR_CNT_DENY);
		d.verdict = REDIR_VERDICT_DENY;
		emit(kind, &d, &dst, port, proto, v6 ? AF_INET6 : AF_INET);
		return CG_DENY;
	}
	st->orig_addr = dst;
	st->orig_port = port;
	st->target_addr = *target;
	st->target_port = d.target_port;
	st->verdict = REDIR_VERDICT_REDIRECT;
	st->reason = d.reason;
	st->family = v6 ? AF_INET6 : AF_INET;
	st->pid = bpf_get_current_pid_tgid() >> 32;
	st->policy_id = d.policy_id;
	st->cgroup_id = attach_cg;
	st->netns_cookie = netns_cookie;

	if (v6) {
		ctx->user_ip6[0] = ((__u32 *)target->b)[0];
		ctx->user_ip6[1] = ((__u32 *)target->b)[1];
		ctx->user_ip6[2] = ((__u32 *)target->b)[2];
		ctx->user_ip6[3] = ((__u32 *)target->b)[3];
	} else {
		ctx->user_ip4 = ((__u32 *)target->b)[3];
	}
	ctx->user_port = bpf_htons(d.target_port);
	count(REDIR_CNT_REDIRECT);
	return CG_ALLOW;
}

SEC("cgroup/connect4")
int redir_connect4(struct bpf_sock_addr *ctx)
{
	return handle_sock_addr(ctx, false, REDIR_EV_CONNECT);
}

SEC("cgroup/connect6")
int redir_connect6(struct bpf_sock_addr *ctx)
{
	return handle_sock_addr(ctx, true, REDIR_EV_CONNECT);
}

SEC("cgroup/sendmsg4")
int redir_sendmsg4(struct bpf_sock_addr *ctx)
{
	return handle_sock_addr(ctx, false, REDIR_EV_SENDMSG);
}

SEC("cgroup/sendmsg6")
int redir_sendmsg6(struct bpf_sock_addr *ctx)
{
	return handle_sock_addr(ctx, true, REDIR_EV_SENDMSG);
}

/* A redirected socket still reports the address it connected to, so clients
 * that check their peer (or log it) see what they asked for. */
static __always_inline int restore_peer(struct bpf_sock_addr *ctx, bool v6)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct redir_sk_state *st = bpf_sk_storage_get(&sk_state, sk, 0, 0);
	if (!st || st->verdict != REDIR_VERDICT_REDIRECT)
		return 1;
	if (v6) {
		ctx->user_ip6[0] = ((__u32 *)st->orig_addr.b)[0];
		ctx->user_ip6[1] = ((__u32 *)st->orig_addr.b)[1];
		ctx->user_ip6[2] = ((__u32 *)st->orig_addr.b)[2];
		ctx->user_ip6[3] = ((__u32 *)st->orig_addr.b)[3];
	} else {
		ctx->user_ip4 = ((__u32 *)st->orig_addr.b)[3];
	}
	ctx->user_port = bpf_htons(st->orig_port);
	return 1;
}

SEC("cgroup/getpeername4")
int redir_getpeername4(struct bpf_sock_addr *ctx)
{
	return restore_peer(ctx, false);
}

SEC("cgroup/getpeername6")
int redir_getpeername6(struct bpf_sock_addr *ctx)
{
	return restore_peer(ctx, true);
}

/* DNS replies from the responder must look like they came from the resolver
 * the application asked (resolvers check the source of the answer). Only a
 * datagram that really comes from the redirect target is rewritten. */
static __always_inline int restore_source(struct bpf_sock_addr *ctx, bool v6)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct redir_sk_state *st = bpf_sk_storage_get(&sk_state, sk, 0, 0);
	if (!st || st->verdict != REDIR_VERDICT_REDIRECT)
		return 1;
	struct redir_addr src;
	if (v6) {
		__u32 w[4] = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3] };
		addr_from_v6(&src, w);
	} else {
		addr_from_v4(&src, ctx->user_ip4);
	}
	if (bpf_ntohs((__u16)ctx->user_port) != st->target_port || !addr_eq(&src, &st->target_addr))
		return 1;
	return restore_peer(ctx, v6);
}

SEC("cgroup/recvmsg4")
int redir_recvmsg4(struct bpf_sock_addr *ctx)
{
	return restore_source(ctx, false);
}

SEC("cgroup/recvmsg6")
int redir_recvmsg6(struct bpf_sock_addr *ctx)
{
	return restore_source(ctx, true);
}

/* ---- original destination for the agent's accepted socket ---- */

/* TCP_CONNECT_CB runs after the source port is chosen and before the SYN is
 * sent, so the 4-tuple entry exists before the agent can accept(). */
SEC("sockops")
int redir_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op != BPF_SOCK_OPS_TCP_CONNECT_CB)
		return 1;
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return 1;
	struct redir_sk_state *st = bpf_sk_storage_get(&sk_state, sk, 0, 0);
	if (!st || st->verdict != REDIR_VERDICT_REDIRECT)
		return 1;

	struct redir_tuple_key k = {};
	if (skops->family == AF_INET) {
		addr_from_v4(&k.peer_addr, skops->local_ip4);
		addr_from_v4(&k.local_addr, skops->remote_ip4);
	} else {
		__u32 l[4] = { skops->local_ip6[0], skops->local_ip6[1], skops->local_ip6[2], skops->local_ip6[3] };
		__u32 r[4] = { skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2], skops->remote_ip6[3] };
		addr_from_v6(&k.peer_addr, l);
		addr_from_v6(&k.local_addr, r);
	}
	k.peer_port = (__u16)skops->local_port;
	k.local_port = (__u16)bpf_ntohl(skops->remote_port);
	k.netns_cookie = st->netns_cookie; /* recorded at connect(): sockops lacks the helper before 5.15-ish */

	struct redir_origdst_val v = {
		.orig_addr = st->orig_addr,
		.orig_port = st->orig_port,
		.reason = st->reason,
		.pid = st->pid,
		.cgroup_id = st->cgroup_id,
		.policy_id = st->policy_id,
	};
	bpf_map_update_elem(&origdst_map, &k, &v, BPF_ANY);
	return 1;
}

/* ---- sockets that would bypass connect/sendmsg ---- */

/* An allowlist, not a blocklist: connect/sendmsg govern exactly TCP stream
 * and UDP datagram sockets, so every other inet socket (raw, ICMP ping,
 * MPTCP, UDP-Lite, SCTP, DCCP, L2TP/IP, SEQPACKET, whatever a module adds
 * next) would carry data past them. PROTOCOL 0 means "the default for the
 * type" only where the kernel has not resolved it yet (the LSM hook). */
static __always_inline bool inet_socket_governed(int type, int protocol, bool resolved)
{
	if (type == SOCK_STREAM)
		return protocol == IPPROTO_TCP || (!resolved && protocol == 0);
	if (type == SOCK_DGRAM)
		return protocol == IPPROTO_UDP || (!resolved && protocol == 0);
	return false;
}

/* Families a sandbox keeps: local IPC, routing-table queries (getaddrinfo
 * asks netlink), and inet under the allowlist above. Packet, vsock, XDP,
 * CAN, Bluetooth, TIPC, RDS, ... reach past every socket-address hook. */
static __always_inline bool socket_admitted(int family, int type, int protocol, bool resolved)
{
	if (family == AF_UNIX || family == AF_NETLINK)
		return true;
	if (family == AF_INET || family == AF_INET6)
		return inet_socket_governed(type, protocol, resolved);
	return false;
}

static __always_inline void emit_socket_refusal(int family, int type, int protocol)
{
	struct decision d = { .verdict = REDIR_VERDICT_DENY, .reason = REDIR_REASON_SOCKET_TYPE };
	struct redir_attach_val *att = find_attachment(&d.attach_cg);
	if (att)
		d.policy_id = att->policy_id;
	count(REDIR_CNT_SOCKET_DENY);
	emit_socket(&d, family, type, protocol);
}

/* Inet sockets: always available (cgroup/sock_create runs from inet_create
 * and inet6_create, after the protocol is resolved). */
SEC("cgroup/sock_create")
int redir_sock_create(struct bpf_sock *sk)
{
	int family = sk->family, type = sk->type, protocol = sk->protocol;
	if (family != AF_INET && family != AF_INET6)
		return CG_ALLOW; /* not reached: only inet families run this hook */
	if (inet_socket_governed(type, protocol, true))
		return CG_ALLOW;
	emit_socket_refusal(family, type, protocol);
	return CG_DENY;
}

/* Every other family never reaches cgroup/sock_create; the per-cgroup LSM
 * hook covers them (and inet again, before the protocol module even loads)
 * where the kernel accepts BPF LSM programs. */
SEC("lsm_cgroup/socket_create")
int BPF_PROG(redir_lsm_socket_create, int family, int type, int protocol, int kern)
{
	if (kern)
		return 1;
	type &= 0xf; /* strip SOCK_NONBLOCK / SOCK_CLOEXEC */
	if (socket_admitted(family, type, protocol, false))
		return 1;
	emit_socket_refusal(family, type, protocol);
	return 0;
}

/* ---- options that route packets past the checked destination ---- */

#define SOL_IP 0
#define SOL_IPV6 41
#define IP_OPTIONS 4
#define IPV6_2292HOPOPTS 3
#define IPV6_2292DSTOPTS 4
#define IPV6_2292RTHDR 5
#define IPV6_2292PKTOPTIONS 6
#define IPV6_HOPOPTS 54
#define IPV6_RTHDRDSTOPTS 55
#define IPV6_RTHDR 57
#define IPV6_DSTOPTS 59
#define REDIR_PAGE_SIZE 4096

/* connect/sendmsg judge the first hop only. IPv4 source routing (LSRR/SSRR
 * in IP_OPTIONS) and IPv6 routing headers (a Segment Routing Header needs no
 * capability) send the packet on to hops nobody checked; the extension
 * header options around them are refused with them (no ordinary client
 * sets any of these). */
static __always_inline bool source_routing_option(int level, int optname)
{
	if (level == SOL_IP)
		return optname == IP_OPTIONS;
	if (level == SOL_IPV6)
		return optname == IPV6_RTHDR || optname == IPV6_2292RTHDR || optname == IPV6_2292PKTOPTIONS ||
		       optname == IPV6_HOPOPTS || optname == IPV6_2292HOPOPTS || optname == IPV6_DSTOPTS ||
		       optname == IPV6_2292DSTOPTS || optname == IPV6_RTHDRDSTOPTS;
	return false;
}

/* BASIC: before 6.0 sockopt programs have neither the task helpers (pid,
 * comm) nor the ancestor cgroup id, so the event names only the cgroup;
 * the loader picks the variant the kernel verifies (5.8 floor). */
static __always_inline int handle_setsockopt(struct bpf_sockopt *ctx, bool basic)
{
	int level = ctx->level, optname = ctx->optname;
	if (source_routing_option(level, optname)) {
		struct bpf_sock *sk = ctx->sk;
		struct decision d = { .verdict = REDIR_VERDICT_DENY, .reason = REDIR_REASON_SOURCE_ROUTE };
		if (!basic) {
			struct redir_attach_val *att = find_attachment(&d.attach_cg);
			if (att)
				d.policy_id = att->policy_id;
		}
		count(REDIR_CNT_SOCKOPT_DENY);
		emit_sockopt(&d, sk ? sk->family : 0, level, optname, basic);
		return CG_DENY;
	}
	/* The program sees at most a page of optval; 0 tells the kernel to use
	 * the caller's value untouched rather than fail a large option. */
	if (ctx->optlen > REDIR_PAGE_SIZE)
		ctx->optlen = 0;
	return CG_ALLOW;
}

SEC("cgroup/setsockopt")
int redir_setsockopt(struct bpf_sockopt *ctx)
{
	return handle_setsockopt(ctx, false);
}

SEC("cgroup/setsockopt")
int redir_setsockopt_basic(struct bpf_sockopt *ctx)
{
	return handle_setsockopt(ctx, true);
}
