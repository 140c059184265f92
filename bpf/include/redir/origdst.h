/* Original destination of redirected sockets.
 *
 * redir_sk_state: SK_STORAGE on the sandbox's socket, written at connect time;
 *   the kernel frees it with the socket (cookie-keyed maps leak).
 * redir_origdst: LRU_HASH keyed by the connection's 4-tuple as the agent sees
 *   it on the accepted socket (peer = sandbox side) plus the cookie of the
 *   sandbox socket's network namespace: two sandboxes in different namespaces
 *   may use identical addresses and ports, and the agent tells them apart by
 *   the listener they arrive on (loopback: its own namespace; a per-namespace
 *   redirect target: the namespaces attached through it). Filled by sockops before
 *   the SYN leaves, so it exists before accept() returns; the agent deletes the
 *   entry after reading it, LRU bounds what a never-accepted SYN leaves behind.
 */
#ifndef REDIR_ORIGDST_H
#define REDIR_ORIGDST_H
#include "types.h"

#define REDIR_MAX_ORIGDST 65536

struct redir_sk_state {
	struct redir_addr orig_addr;   /* what the application asked for */
	struct redir_addr target_addr; /* where the kernel sent it */
	__u16 orig_port;               /* host order */
	__u16 target_port;             /* host order */
	__u8 verdict;
	__u8 reason;
	__u8 family;                   /* AF_INET / AF_INET6 of the socket */
	__u8 _pad;
	__u32 pid;
	__u32 policy_id;
	__u64 cgroup_id;
	__u64 netns_cookie;            /* the socket's network namespace at connect time */
};

struct redir_tuple_key {
	struct redir_addr peer_addr;  /* sandbox socket's local address */
	struct redir_addr local_addr; /* agent listener address */
	__u16 peer_port;              /* host order */
	__u16 local_port;
	__u32 _pad;
	__u64 netns_cookie;           /* the sandbox socket's network namespace */
};

struct redir_origdst_val {
	struct redir_addr orig_addr;
	__u16 orig_port; /* host order */
	__u8 reason;
	__u8 _pad;
	__u32 pid;
	__u64 cgroup_id;
	__u32 policy_id;
	__u32 _pad2;
};

#endif
