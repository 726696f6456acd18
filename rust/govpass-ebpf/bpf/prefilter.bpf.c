// SPDX-License-Identifier: GPL-2.0
/*
 * The kernel pre-filter for iptables' bpf match (xt_bpf): per outbound TCP
 * packet, whether govpass must see it, without connection tracking.
 *
 * - A packet whose payload starts a ClientHello record matches, and its flow
 *   is remembered (LRU map, key: addresses and ports) with where the record
 *   starts and ends in sequence space and when its first packet was seen.
 * - Any other packet with payload matches while its flow is remembered, it
 *   starts inside the record and the record's first packet is at most
 *   max_age_ns old; the first one that does not drops the entry.
 * - Everything else (pure ACKs, bulk data) does not match.
 *
 * With the kernel split gate (gate_on), a record whole in one packet that the
 * kernel split takes (common.h) does not match while the gate map says "on":
 * the kernel split program on the egress interface cuts it instead.
 *
 * One object, one program and one flow map per address family; the loader
 * loads the family it needs and shrinks the other family's map.
 */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "common.h"

#define FLOW_ENTRIES 8192 /* flows with a ClientHello record still in flight */
#define PROTO_TCP 6

/* Set by the loader before the program is verified (read-only at run time). */
const volatile __u64 max_age_ns = 1;
const volatile __u32 gate_on = 0;
const volatile __u32 gate_min = 0;
const volatile __u32 gate_max = 0;
const volatile __u32 gate_chunk = 0; /* the kernel split's split-chunk */
const volatile __u32 gate_seg = 0; /* and the engine's max-seg-payload (common.h) */

struct key_ipv4 {
	__be32 saddr;
	__be32 daddr;
	__be32 ports; /* source and destination port as on the wire */
};

struct key_ipv6 {
	__u8 saddr[16];
	__u8 daddr[16];
	__be32 ports;
};

struct flow {
	__u32 end; /* sequence number where the record ends (mod 2^32) */
	__u32 start; /* where it starts */
	__u64 first_ns; /* bpf_ktime_get_ns() of the record's first packet */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FLOW_ENTRIES);
	__type(key, struct key_ipv4);
	__type(value, struct flow);
} flows_ipv4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FLOW_ENTRIES);
	__type(key, struct key_ipv6);
	__type(value, struct flow);
} flows_ipv6 SEC(".maps");

/* The kernel split's gate: one u32, non-zero while the kernel split program is
 * attached to every interface the rules cover. Created by its owner and
 * handed over pinned by name at load time. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} gp_gate SEC(".maps");

struct tcp_head {
	__be32 ports;
	__be32 seq;
	__be32 ack;
	__u8 doff; /* data offset in the high nibble */
	__u8 rest[7];
};

/* The gate is on and the record is whole in this packet, whose IP and TCP
 * headers are hdr_len bytes: the kernel split takes it. */
static __always_inline bool left_to_kernel_split(struct __sk_buff *skb,
						 const __u8 head[GP_HELLO_HEAD], __u64 len,
						 __u32 hdr_len)
{
	__u32 max = gp_split_max(gate_chunk, gate_max, gate_seg, hdr_len);
	__u32 zero = 0;
	__u32 *on;

	if (!gate_on || !gp_whole_record(head, len, gate_min, max, skb->gso_segs))
		return false;
	on = bpf_map_lookup_elem(&gp_gate, &zero);
	return on && *on;
}

/* The decision for a packet whose TCP header starts at tcp_off and whose IP
 * packet is ip_len bytes long; `key` holds the addresses, its ports are filled
 * in here. */
static __always_inline int decide(struct __sk_buff *skb, void *flows, void *key,
				  __be32 *key_ports, __u32 tcp_off, __u32 ip_len)
{
	struct tcp_head tcp;
	__u8 head[GP_HELLO_HEAD];
	struct flow *known;
	struct flow fresh;
	__s64 len;
	__u32 payload_off, seq;

	if (bpf_skb_load_bytes(skb, tcp_off, &tcp, sizeof(tcp)))
		return 0;
	if ((tcp.doff >> 4) < 5)
		return 0;
	payload_off = tcp_off + ((__u32)(tcp.doff >> 4) << 2);
	len = (__s64)ip_len - payload_off;
	if (len <= 0)
		return 0; /* a pure ACK, or a bogus length */
	seq = bpf_ntohl(tcp.seq);
	*key_ports = tcp.ports;

	if (len >= GP_HELLO_HEAD) {
		if (bpf_skb_load_bytes(skb, payload_off, head, sizeof(head)))
			return 0;
		if (gp_hello_start(head)) {
			if (left_to_kernel_split(skb, head, len, payload_off))
				return 0;
			/* Remembered even when the whole record is in this packet: the
			 * kernel may send part of it again (a tail loss probe) while
			 * govpass still holds the original. */
			fresh.end = seq + gp_record_size(head);
			fresh.start = seq;
			fresh.first_ns = bpf_ktime_get_ns();
			bpf_map_update_elem(flows, key, &fresh, BPF_ANY);
			return 1;
		}
	}

	known = bpf_map_lookup_elem(flows, key);
	if (!known)
		return 0;
	/* Inside the record when (seq - start) < (end - start), both mod 2^32;
	 * and only while collecting can still be going on. */
	if (bpf_ktime_get_ns() - known->first_ns > max_age_ns ||
	    (__u32)(seq - known->start) >= (__u32)(known->end - known->start)) {
		bpf_map_delete_elem(flows, key);
		return 0;
	}
	return 1;
}

SEC("socket")
int prefilter_ipv4(struct __sk_buff *skb)
{
	__u8 ip[20];
	struct key_ipv4 key;
	__u32 ihl;

	if (bpf_skb_load_bytes(skb, 0, ip, sizeof(ip)))
		return 0;
	ihl = (__u32)(ip[0] & 0x0F) << 2;
	if (ihl < 20)
		return 0;
	if ((((__u32)ip[6] << 8) | ip[7]) & 0x3FFF)
		return 0; /* MF or an offset: a fragment */
	if (ip[9] != PROTO_TCP)
		return 0;
	__builtin_memcpy(&key.saddr, &ip[12], 4);
	__builtin_memcpy(&key.daddr, &ip[16], 4);
	return decide(skb, &flows_ipv4, &key, &key.ports, ihl, ((__u32)ip[2] << 8) | ip[3]);
}

SEC("socket")
int prefilter_ipv6(struct __sk_buff *skb)
{
	__u8 ip[40];
	struct key_ipv6 key;

	if (bpf_skb_load_bytes(skb, 0, ip, sizeof(ip)))
		return 0;
	if (ip[6] != PROTO_TCP)
		return 0; /* extension headers are not followed */
	__builtin_memcpy(key.saddr, &ip[8], 16);
	__builtin_memcpy(key.daddr, &ip[24], 16);
	return decide(skb, &flows_ipv6, &key, &key.ports, 40, (((__u32)ip[4] << 8) | ip[5]) + 40);
}

char LICENSE[] SEC("license") = "GPL";
