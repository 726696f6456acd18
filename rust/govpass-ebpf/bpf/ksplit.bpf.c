// SPDX-License-Identifier: GPL-2.0
/*
 * The kernel split: a tc egress (tcx) program that makes govpass's default
 * split of a ClientHello record whole in one packet, on the interface's egress
 * path: a first segment of `chunk` payload bytes, then the rest.
 *
 * A packet is split when all of these hold (anything else goes on untouched):
 * - it carries none of govpass's mark bits (the workers' own packets);
 * - it is not a GSO packet;
 * - it has a socket (host mode, `local`) or none (router mode);
 * - IPv4 without fragmentation, or IPv6 whose next header is TCP;
 * - TCP to one of `ports`, no SYN, FIN, RST or URG flag;
 * - the payload is exactly one ClientHello record (common.h), longer than
 *   `chunk` and at most `max_payload` bytes, and the engine too would cut it
 *   into two segments only (gp_split_max: with `max_seg` bytes of payload in a
 *   segment of 40 header bytes, less what the headers have more).
 *
 * How: the bytes after the first `chunk` are copied to a per-CPU scratch map,
 * the packet is cut to the first `chunk` bytes and a copy of it leaves
 * (bpf_clone_redirect to the same interface; the copy meets this program again
 * and goes on, being no whole record any more); then the packet grows back,
 * takes the rest, and its sequence number moves on by `chunk`. PSH is only on
 * the rest and CWR only on the first segment, as on the engine's segments. IP lengths, the IPv4 header
 * checksum and the TCP checksum are updated in place.
 *
 * Checksums: the TCP checksum field of this host's own packets
 * (CHECKSUM_PARTIAL) holds only the pseudo-header sum, of forwarded ones the
 * full sum. Length changes go through bpf_l4_csum_replace with the
 * pseudo-header flag, right in both cases; payload, flag and sequence changes
 * go in without it, which the kernel applies to full sums only. The payload
 * differences are one's complement sums (bpf_csum_diff) of the record's two
 * parts.
 *
 * Outcomes, counted per CPU: "split"; "unsplit" (a step failed before the
 * packet changed: it goes on whole); "first_only" (the copy could not be
 * sent: the first segment goes on alone, TCP sends the rest again); "dropped"
 * (cut, but a header could not be made right: TCP sends it again).
 */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "common.h"

#define GP_PORTS_MAX 16 /* destination ports (the rules take at most 15) */
#define CSUM_STEP 512 /* bpf_csum_diff sums at most 512 bytes per call */
/* The rest of a record, padded to 4 bytes, summed in three steps. */
#define SCRATCH_SIZE (3 * CSUM_STEP + 8)
_Static_assert(SCRATCH_SIZE >= GP_PAYLOAD_MAX + 4, "scratch too small");

#define TCX_NEXT -1 /* go on: the next program on the interface, then the qdisc */
#define TCX_DROP 2

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define PROTO_TCP 6

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_URG 0x20
#define TCP_CWR 0x80

/* Set by the loader before the program is verified (read-only at run time). */
const volatile __u32 chunk = 1; /* the first segment's payload bytes, 1..GP_CHUNK_MAX */
const volatile __u32 max_payload = GP_HELLO_HEAD; /* the largest record split */
const volatile __u32 max_seg = 1; /* the engine's max-seg-payload */
const volatile __u32 mark = 0; /* packets with any of these bits are left alone */
const volatile __u32 local = 1; /* host mode: packets with a socket; else without */
const volatile __u32 l2 = 14; /* link header bytes before the IP header: 14 or 0 */
const volatile __u32 n_ports = 0;
const volatile __u16 ports[GP_PORTS_MAX] = {}; /* host byte order */

enum { SPLIT, UNSPLIT, FIRST_ONLY, DROPPED, N_COUNTERS };

struct scratch {
	__u8 data[SCRATCH_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} gp_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, N_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} gp_counters SEC(".maps");

/* The 20 bytes of a TCP header without options. */
struct tcp_head {
	__be16 sport;
	__be16 dport;
	__be32 seq;
	__be32 ack;
	__u8 doff; /* data offset in the high nibble */
	__u8 flags;
	__be16 window;
	__sum16 check;
	__be16 urg;
};

/* Where the headers are, as the full tests found them. */
struct where {
	__u32 l4; /* the TCP header's offset */
	__u32 payload; /* the payload's offset */
	__u32 len; /* the payload's length */
	__u32 len_field; /* the IP length field's offset */
	__u32 ip_start; /* what the IP length field counts from */
	bool v4;
};

static __always_inline int count(__u32 index, int verdict)
{
	__u64 *n = bpf_map_lookup_elem(&gp_counters, &index);

	if (n)
		*n += 1;
	return verdict;
}

static __always_inline bool port_wanted(__u16 port)
{
	for (__u32 i = 0; i < GP_PORTS_MAX; i++) {
		if (i >= n_ports)
			break;
		if (ports[i] == port)
			return true;
	}
	return false;
}

static __always_inline __u32 fold(__u64 sum)
{
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	return (sum & 0xFFFF) + (sum >> 16);
}

/*
 * Sends most packets on at once, reading their headers in place (no helper
 * call): not TCP, a SYN, a payload length no whole record split here can
 * have (pure ACKs above all), another port; then, with one helper call, a
 * payload that does not start like a ClientHello (bulk data). Returns false
 * for those; true for the rest, and for packets whose headers are not all in
 * the linear part: the full tests (which repeat every test made here) decide.
 */
static __always_inline bool screen(struct __sk_buff *skb, bool v4)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u8 *ip = data + (l2 ? 14 : 0);
	__u8 *tcp;
	__u8 head[GP_HELLO_HEAD];
	__u32 ip_len, hdrs, doff;
	__s32 len;

	if (v4) {
		if ((void *)(ip + 20) > end)
			return true;
		ip_len = (__u32)(ip[0] & 0x0F) << 2;
		if (ip[9] != PROTO_TCP)
			return false;
		len = (__s32)(((__u32)ip[2] << 8) | ip[3]) - (__s32)ip_len;
		tcp = ip + ip_len;
		if ((void *)(tcp + 20) > end)
			return true;
	} else {
		if ((void *)(ip + 60) > end)
			return true;
		if (ip[6] != PROTO_TCP)
			return false;
		len = (((__u32)ip[4] << 8) | ip[5]);
		ip_len = 40;
		tcp = ip + 40;
	}
	if (tcp[13] & TCP_SYN)
		return false;
	doff = (__u32)(tcp[12] >> 4) << 2;
	len -= (__s32)doff;
	if (len < (__s32)gp_split_min_payload(chunk) || len > (__s32)max_payload)
		return false;
	if (!port_wanted(((__u16)tcp[2] << 8) | tcp[3]))
		return false;
	hdrs = (l2 ? 14 : 0) + ip_len + doff;
	if (bpf_skb_load_bytes(skb, hdrs, head, sizeof(head)))
		return true;
	return gp_hello_start(head);
}

/* `seed` plus the sum of the padded rest's bytes at..at+512 (as far as `pad`);
 * negative once a step has failed. */
static __always_inline __s64 sum_step(struct scratch *rest, __u64 pad, __u64 at, __s64 seed)
{
	__u64 size;

	if (seed < 0 || pad <= at || pad > GP_PAYLOAD_MAX + 3)
		return seed;
	size = pad - at;
	/* Keep the clamp on this register, where the verifier sees it. */
	asm volatile("" : "+r"(size));
	if (size > CSUM_STEP)
		size = CSUM_STEP;
	return bpf_csum_diff(NULL, 0, (__be32 *)&rest->data[at], size, seed);
}

/* IP length (and IPv4 header sum) and the TCP pseudo-header sum, for a payload
 * going from `from` to `to` bytes. */
static __always_inline int lengths(struct __sk_buff *skb, const struct where *w, __u32 from,
				   __u32 to)
{
	__be16 ip_from = bpf_htons(w->payload + from - w->ip_start);
	__be16 ip_to = bpf_htons(w->payload + to - w->ip_start);
	__be16 tcp_from = bpf_htons(w->payload + from - w->l4);
	__be16 tcp_to = bpf_htons(w->payload + to - w->l4);

	if (w->v4 && bpf_l3_csum_replace(skb, w->ip_start + 10, ip_from, ip_to, 2))
		return -1;
	if (bpf_skb_store_bytes(skb, w->len_field, &ip_to, 2, 0))
		return -1;
	return bpf_l4_csum_replace(skb, w->l4 + 16, tcp_from, tcp_to, BPF_F_PSEUDO_HDR | 2) ? -1
											    : 0;
}

/* The TCP flags' 16-bit word (with the data offset) from `from` to `to`. */
static __always_inline int tcp_flags(struct __sk_buff *skb, const struct where *w, __u8 doff,
				     __u8 from, __u8 to)
{
	__u8 old[2] = { doff, from };
	__u8 new[2] = { doff, to };
	__u16 old_word, new_word;

	__builtin_memcpy(&old_word, old, 2);
	__builtin_memcpy(&new_word, new, 2);
	if (bpf_l4_csum_replace(skb, w->l4 + 16, old_word, new_word, 2))
		return -1;
	return bpf_skb_store_bytes(skb, w->l4 + 12, new, 2, 0) ? -1 : 0;
}

static __always_inline int split(struct __sk_buff *skb, bool v4)
{
	__u32 link = l2 ? 14 : 0;
	__u32 n = chunk;
	__u8 ip[40];
	struct tcp_head tcp;
	__u8 head[GP_HELLO_HEAD];
	__u8 first[GP_CHUNK_MAX + 8] = {};
	struct scratch *rest;
	struct where w = { .v4 = v4 };
	__u32 zero = 0, rest_len, doff, end;
	__u64 pad;
	__s64 len, sum, first_sum, rest_sum, d1, d2;
	__be32 seq;

	if (n < 1 || n > GP_CHUNK_MAX)
		return TCX_NEXT;
	if (v4) {
		if (bpf_skb_load_bytes(skb, link, ip, 20))
			return TCX_NEXT;
		if ((ip[0] >> 4) != 4 || (ip[0] & 0x0F) < 5)
			return TCX_NEXT;
		if ((((__u32)ip[6] << 8) | ip[7]) & 0x3FFF)
			return TCX_NEXT; /* MF or an offset: a fragment */
		if (ip[9] != PROTO_TCP)
			return TCX_NEXT;
		w.l4 = link + ((__u32)(ip[0] & 0x0F) << 2);
		w.ip_start = link;
		w.len_field = link + 2;
		end = link + (((__u32)ip[2] << 8) | ip[3]);
	} else {
		if (bpf_skb_load_bytes(skb, link, ip, 40))
			return TCX_NEXT;
		if ((ip[0] >> 4) != 6 || ip[6] != PROTO_TCP)
			return TCX_NEXT; /* extension headers are not followed */
		w.l4 = link + 40;
		w.ip_start = link + 40;
		w.len_field = link + 4;
		end = link + 40 + (((__u32)ip[4] << 8) | ip[5]);
	}

	if (bpf_skb_load_bytes(skb, w.l4, &tcp, sizeof(tcp)))
		return TCX_NEXT;
	if (!port_wanted(bpf_ntohs(tcp.dport)))
		return TCX_NEXT;
	/* The engine leaves these whole too (a TCP Fast Open SYN carries data). */
	if (tcp.flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG))
		return TCX_NEXT;
	doff = (__u32)(tcp.doff >> 4) << 2;
	if (doff < 20)
		return TCX_NEXT;
	w.payload = w.l4 + doff;
	len = (__s64)end - w.payload;
	if (len < gp_split_min_payload(n) || len > max_payload || len > GP_PAYLOAD_MAX)
		return TCX_NEXT;
	if (bpf_skb_load_bytes(skb, w.payload, head, sizeof(head)))
		return TCX_NEXT;
	if (!gp_hello_start(head) ||
	    !gp_whole_record(head, len, gp_split_min_payload(n),
			     gp_split_max(n, max_payload, max_seg, w.payload - link),
			     skb->gso_segs))
		return TCX_NEXT;
	w.len = len;

	/* -- the two parts and their sums ------------------------------------------ */
	rest = bpf_map_lookup_elem(&gp_scratch, &zero);
	if (!rest)
		return count(UNSPLIT, TCX_NEXT);
	rest_len = w.len - n;
	if (rest_len < 1 || rest_len > GP_PAYLOAD_MAX - 1)
		return count(UNSPLIT, TCX_NEXT);
	if (bpf_skb_load_bytes(skb, w.payload + n, rest->data, rest_len))
		return count(UNSPLIT, TCX_NEXT);
	__builtin_memset(&rest->data[rest_len], 0, 4); /* zero padding up to 4 bytes */
	pad = (rest_len + 3) & ~3U;
	if (bpf_skb_load_bytes(skb, w.payload, first, n))
		return count(UNSPLIT, TCX_NEXT);
	first_sum = bpf_csum_diff(NULL, 0, (__be32 *)first, (n + 3) & ~3U, 0);
	if (first_sum < 0)
		return count(UNSPLIT, TCX_NEXT);
	first_sum = fold(first_sum);
	sum = sum_step(rest, pad, 0, 0);
	sum = sum_step(rest, pad, CSUM_STEP, sum);
	sum = sum_step(rest, pad, 2 * CSUM_STEP, sum);
	if (sum < 0)
		return count(UNSPLIT, TCX_NEXT);
	rest_sum = fold(sum); /* the rest's sum as if it began the payload */
	/* The rest against the first segment: + sum(rest) - sum(first part). */
	d2 = 0xFFFF - first_sum + rest_sum;
	/* The first segment against the record: - sum(rest where it was, at byte n). */
	if (n & 1)
		rest_sum = ((rest_sum & 0xFF) << 8) | (rest_sum >> 8);
	d1 = 0xFFFF - rest_sum;

	/* -- the first segment: cut to n bytes, and a copy of it sent ---------------- */
	if (bpf_skb_change_tail(skb, w.payload + n, 0))
		return count(UNSPLIT, TCX_NEXT);
	if (lengths(skb, &w, w.len, n))
		return count(DROPPED, TCX_DROP);
	if (bpf_l4_csum_replace(skb, w.l4 + 16, 0, d1, 0))
		return count(DROPPED, TCX_DROP);
	/* As the engine's segments: PSH only on the last one, whatever the original had. */
	if (tcp_flags(skb, &w, tcp.doff, tcp.flags, tcp.flags & ~TCP_PSH))
		return count(DROPPED, TCX_DROP);
	if (bpf_clone_redirect(skb, skb->ifindex, 0))
		return count(FIRST_ONLY, TCX_NEXT);

	/* -- the rest: the packet grown back, refilled, its sequence number moved ---- */
	if (bpf_skb_change_tail(skb, w.payload + rest_len, 0))
		return count(DROPPED, TCX_DROP);
	if (bpf_skb_store_bytes(skb, w.payload, rest->data, rest_len, 0))
		return count(DROPPED, TCX_DROP);
	if (lengths(skb, &w, n, rest_len))
		return count(DROPPED, TCX_DROP);
	if (bpf_l4_csum_replace(skb, w.l4 + 16, 0, d2, 0))
		return count(DROPPED, TCX_DROP);
	/* As the engine's last segment: PSH; CWR only on the first (it marks the
	 * first data sent after the window was reduced). */
	if (tcp_flags(skb, &w, tcp.doff, tcp.flags & ~TCP_PSH, (tcp.flags | TCP_PSH) & ~TCP_CWR))
		return count(DROPPED, TCX_DROP);
	seq = bpf_htonl(bpf_ntohl(tcp.seq) + n);
	if (bpf_l4_csum_replace(skb, w.l4 + 16, tcp.seq, seq, 4))
		return count(DROPPED, TCX_DROP);
	if (bpf_skb_store_bytes(skb, w.l4 + 4, &seq, 4, 0))
		return count(DROPPED, TCX_DROP);
	return count(SPLIT, TCX_NEXT);
}

SEC("classifier")
int govpass_split(struct __sk_buff *skb)
{
	bool v4;

	/* Cheap tests first: every packet leaving the interface meets them. */
	if (skb->mark & mark)
		return TCX_NEXT;
	if (skb->gso_segs > 1)
		return TCX_NEXT;
	if (local) {
		if (!skb->sk)
			return TCX_NEXT;
	} else if (skb->sk) {
		return TCX_NEXT;
	}
	if (skb->protocol == bpf_htons(ETH_P_IP))
		v4 = true;
	else if (skb->protocol == bpf_htons(ETH_P_IPV6))
		v4 = false;
	else
		return TCX_NEXT;
	if (!screen(skb, v4))
		return TCX_NEXT;
	return split(skb, v4);
}

char LICENSE[] SEC("license") = "GPL";
