/* Map redir_events: RINGBUF of struct redir_event, read by the agent's event
 * reader and written to the audit log. redir_counters: PERCPU_ARRAY of __u64
 * indexed by enum redir_counter. event_drops: LRU_HASH attached cgroup id ->
 * __u64 events lost to a full ring buffer (0 = no attachment found). */
#ifndef REDIR_EVENTS_H
#define REDIR_EVENTS_H
#include "types.h"

#define REDIR_EVENTS_BYTES (1 << 20)

enum redir_event_kind {
	REDIR_EV_CONNECT = 1,  /* connect() verdict */
	REDIR_EV_SENDMSG = 2,  /* unconnected UDP sendmsg() verdict */
	REDIR_EV_SOCKET = 3,   /* socket() refused: a kind the hooks do not govern */
	REDIR_EV_SETSOCKOPT = 4, /* setsockopt() refused: a source-routing option */
	REDIR_EV_FORWARDED = 5,  /* a packet from a sandbox's link dropped by the node-side guard */
};

struct redir_event {
	__u64 ts_ns;
	__u64 cgroup_id;
	__u32 pid;
	__u32 policy_id;
	char comm[16];
	struct redir_addr addr; /* destination the application asked for */
	__u16 port;             /* host order */
	__u8 kind;
	__u8 verdict;
	__u8 reason;
	__u8 proto;             /* IPPROTO_* ; socket(): the protocol argument; setsockopt(): the level */
	__u8 family;            /* AF_* of the socket */
	__u8 sock_type;         /* SOCK_* for socket() events */
	__u16 sock_protocol;    /* socket(): the full protocol argument (MPTCP is 262); setsockopt(): the option */
	__u8 _pad[6];
};

enum redir_counter {
	REDIR_CNT_ALLOW = 0,
	REDIR_CNT_DENY = 1,
	REDIR_CNT_REDIRECT = 2,
	REDIR_CNT_SOCKET_DENY = 3,
	REDIR_CNT_EVENTS_DROPPED = 4,
	REDIR_CNT_SOCKOPT_DENY = 5,
	REDIR_CNT_GUARD_DROP = 6,   /* packets the node-side guard dropped */
	REDIR_CNT_MAX = 8,
};

#endif
