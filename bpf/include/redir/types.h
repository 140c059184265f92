/* Scalar types shared by the BPF programs and the C++ agent. The BPF side gets
 * them from vmlinux.h; userspace from the kernel UAPI headers. */
#ifndef REDIR_TYPES_H
#define REDIR_TYPES_H
#ifndef __bpf__
#include <linux/types.h>
#endif

/* Every address in a map is 16 bytes: IPv6 as is, IPv4 as v4-mapped IPv6
 * (::ffff:a.b.c.d). One layout means v4-mapped v6 destinations and plain v4
 * destinations hit the same policy entries. */
struct redir_addr {
	__u8 b[16];
};

enum redir_verdict {
	REDIR_VERDICT_NONE = 0,
	REDIR_VERDICT_ALLOW = 1,
	REDIR_VERDICT_DENY = 2,
	REDIR_VERDICT_REDIRECT = 3,
};

/* Why a verdict was reached; carried in events so the audit log explains itself. */
enum redir_reason {
	REDIR_REASON_POLICY = 0,        /* a policy rule (or the default deny) decided */
	REDIR_REASON_NO_ATTACHMENT = 1, /* program ran but no attachment entry: fail closed */
	REDIR_REASON_LINK_LOCAL = 2,    /* metadata / link-local (never_reachable in the special table) */
	REDIR_REASON_LOOPBACK = 3,      /* loopback decided by network-namespace rule */
	REDIR_REASON_INFERENCE = 4,     /* inference VIP -> terminator */
	REDIR_REASON_SOCKET_TYPE = 5,   /* socket kind outside the allowlist (raw, ping, MPTCP, packet, ...) refused at creation */
	REDIR_REASON_DNS = 6,           /* port 53 -> DNS responder */
	REDIR_REASON_SOURCE_ROUTE = 7,  /* IP options / IPv6 routing headers would send packets past the checked hop */
	REDIR_REASON_AGENT_ADDRESS = 8, /* direct (not redirected) traffic to the agent's address on the sandbox's side */
	REDIR_REASON_UNREDIRECTED = 9,  /* guard: a packet connect() would have redirected arrives unrewritten (hooks bypassed) */
	REDIR_REASON_UNPARSED = 10,     /* guard: fragment, IP options, extension header, non-IP: what it cannot judge is dropped */
};

#define REDIR_PROTO_TCP 6
#define REDIR_PROTO_UDP 17

#endif
