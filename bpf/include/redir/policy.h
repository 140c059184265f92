/* Policy maps. Every key starts with the policy id, so a reload writes the new
 * policy beside the old one and only the attachment entry flips.
 *
 * redir_policy_lpm: LPM_TRIE  {prefixlen, policy_id, addr} -> {portset_id}
 *   prefixlen counts the 32 policy-id bits plus the address prefix (v4 rules
 *   are v4-mapped, so a v4 /24 is 32 + 96 + 24). The compiler stores in each
 *   entry the *effective* port set for addresses whose longest match it is
 *   (all covering allows minus all covering denies), so one lookup decides.
 * redir_portsets: HASH {policy_id, portset_id} -> sorted port ranges.
 */
#ifndef REDIR_POLICY_H
#define REDIR_POLICY_H
#include "types.h"

#define REDIR_MAX_POLICY_ENTRIES 1048576
#define REDIR_MAX_PORTSETS 65536
/* Ranges per port set; the compiler rejects a policy that needs more for one
 * prefix rather than over-allowing. */
#define REDIR_MAX_PORT_RANGES 64
#define REDIR_LPM_DATA_BITS (32 + 128)

struct redir_lpm_key {
	__u32 prefixlen;
	__u32 policy_id;
	__u8 addr[16];
};

#define REDIR_LPM_F_HAS_DENY (1u << 0) /* deny_portset_id is valid */

struct redir_lpm_val {
	__u32 portset_id;      /* effective allowed/inspected ports for this prefix */
	__u32 flags;
	/* Union of the deny rules covering this prefix. DNS-learned admissions
	 * (redir_dns_allow) are checked against it, so a cidr deny also wins over
	 * a host allow. */
	__u32 deny_portset_id;
	__u32 _pad;
};

struct redir_portset_key {
	__u32 policy_id;
	__u32 portset_id;
};

struct redir_port_range {
	__u16 lo;      /* host byte order, inclusive */
	__u16 hi;      /* inclusive */
	__u8 proto;    /* REDIR_PROTO_TCP or REDIR_PROTO_UDP */
	__u8 verdict;  /* REDIR_VERDICT_ALLOW or REDIR_VERDICT_REDIRECT (inspect) */
	__u16 _pad;
};

/* Ranges sorted by (proto, lo), disjoint. Anything not covered is denied. */
struct redir_portset {
	__u32 count;
	__u32 _pad;
	struct redir_port_range r[REDIR_MAX_PORT_RANGES];
};

#endif
