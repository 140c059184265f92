/* The maps every redir BPF program shares, defined once: each object that
 * includes this gets the same definitions, and libbpf reuses the pins under
 * <bpffs>/maps, so the cgroup programs (redir.bpf.c) and the node-side guard
 * (guard.bpf.c) read one set of policy maps. BPF only. */
#ifndef REDIR_MAPS_H
#define REDIR_MAPS_H
#include "redir/types.h"
#include "redir/config.h"
#include "redir/attach.h"
#include "redir/policy.h"
#include "redir/origdst.h"
#include "redir/events.h"
#include "redir/dns.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct redir_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cfg_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, REDIR_MAX_ATTACHMENTS);
	__type(key, struct redir_attach_key);
	__type(value, struct redir_attach_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} attach_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, REDIR_MAX_POLICY_ENTRIES);
	__type(key, struct redir_lpm_key);
	__type(value, struct redir_lpm_val);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_lpm SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, REDIR_MAX_PORTSETS);
	__type(key, struct redir_portset_key);
	__type(value, struct redir_portset);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} portsets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, REDIR_MAX_DNS_ALLOW);
	__type(key, struct redir_dns_allow_key);
	__type(value, struct redir_dns_allow_val);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dns_allow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct redir_sk_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sk_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, REDIR_MAX_ORIGDST);
	__type(key, struct redir_tuple_key);
	__type(value, struct redir_origdst_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} origdst_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, REDIR_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, REDIR_MAX_ATTACHMENTS);
	__type(key, __u64);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} event_drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, REDIR_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} counters SEC(".maps");

#endif
