/* Map redir_guard: HASH ifindex -> attached cgroup id. The node-side guard
 * (guard.bpf.c) runs on the ingress of the host side of a sandbox's link and
 * judges each packet under the attachment this entry names. */
#ifndef REDIR_GUARD_H
#define REDIR_GUARD_H
#include "types.h"

#define REDIR_MAX_GUARDS 4096

struct redir_guard_val {
	__u64 cgroup_id; /* key into redir_attach */
};

#endif
