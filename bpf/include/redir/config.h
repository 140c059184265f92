/* Map redir_config: ARRAY, one entry (key 0). Written by the agent at start. */
#ifndef REDIR_CONFIG_H
#define REDIR_CONFIG_H
#include "types.h"

struct redir_config {
	__u64 agent_netns_cookie;    /* netns of the agent: decides "shared namespace" loopback rules */
	struct redir_addr inference_vip4; /* v4-mapped */
	struct redir_addr inference_vip6; /* all zero: no v6 VIP */
	struct redir_addr terminator4;    /* v4-mapped agent address redirected connections go to */
	struct redir_addr terminator6;
	__u16 terminator_port;       /* TLS terminator (inference.local) */
	__u16 plain_http_port;       /* refuses plain HTTP to inference.local with a clear message */
	__u16 relay_port;            /* transparent relay for "inspect" rules */
	__u16 dns_port;              /* DNS responder, UDP and TCP; 0 = not running */
	__u32 flags;
	__u32 _pad;
};

#endif
