/* SPDX-License-Identifier: MIT */
/*
 * What govpass's kernel programs share: the test that a TCP payload starts a
 * TLS ClientHello record, the test that such a record is whole in one packet,
 * and the sizes the kernel split takes. The pre-filter and the kernel split must agree on both (the
 * pre-filter leaves to the kernel split exactly the packets it takes), so both
 * live here and nowhere else.
 */
#ifndef GOVPASS_COMMON_H
#define GOVPASS_COMMON_H

#include <linux/types.h>
#include <stdbool.h>

/* Bytes read from the payload's start: the 5-byte record header and the
 * handshake type. */
#define GP_HELLO_HEAD 6

/* A handshake record (0x16) of TLS major version 3 whose first handshake
 * message is a ClientHello (type 1). The minor version and the length are not
 * checked: the user-space engine decides what the record is. */
static __always_inline bool gp_hello_start(const __u8 head[GP_HELLO_HEAD])
{
	return head[0] == 0x16 && head[1] == 0x03 && head[5] == 0x01;
}

/* The kernel split's limits: the first segment is at most GP_CHUNK_MAX bytes
 * (it is summed from the stack), the whole record at most GP_PAYLOAD_MAX (one
 * Ethernet MTU). */
#define GP_CHUNK_MAX 64
#define GP_PAYLOAD_MAX 1500

/* The smallest payload the kernel split cuts at `chunk`: a record header and
 * its handshake type, and more than the first segment. The pre-filter's gate
 * gets the same bound from the loader. */
static __always_inline __u32 gp_split_min_payload(__u32 chunk)
{
	return chunk + 1 > GP_HELLO_HEAD ? chunk + 1 : GP_HELLO_HEAD;
}

/* The largest record the kernel split takes from a packet whose IP and TCP
 * headers are `hdr_len` bytes, cutting it at `chunk`: at most `max_payload`,
 * and no more than the engine would cut into two segments. The engine puts at
 * most `max_seg` payload bytes in a segment with 40 bytes of headers, and as
 * many fewer as the headers have more (IPv6, IP and TCP options); a record
 * whose first segment or rest would exceed that goes to the engine, which cuts
 * it into more. 0 when not even the first segment fits. */
static __always_inline __u32 gp_split_max(__u32 chunk, __u32 max_payload, __u32 max_seg,
					  __u32 hdr_len)
{
	__u32 extra = hdr_len > 40 ? hdr_len - 40 : 0;
	__u32 cap = max_seg > extra ? max_seg - extra : 0;

	if (cap < chunk)
		return 0;
	return chunk + cap < max_payload ? chunk + cap : max_payload;
}

/* The record's size with its 5-byte header, from the header's length field. */
static __always_inline __u32 gp_record_size(const __u8 head[GP_HELLO_HEAD])
{
	return (((__u32)head[3] << 8) | head[4]) + 5;
}

/* The record announced by `head` is exactly this packet's payload, its size is
 * within [min_payload, max_payload], its version one the engine splits
 * (0x0301 to 0x0304; the engine passes others whole) and the packet is not a
 * GSO super-packet (the kernel split cuts one real packet). */
static __always_inline bool gp_whole_record(const __u8 head[GP_HELLO_HEAD], __u64 payload_len,
					    __u32 min_payload, __u32 max_payload, __u32 gso_segs)
{
	return head[2] >= 0x01 && head[2] <= 0x04 && gp_record_size(head) == payload_len &&
	       payload_len >= min_payload &&
	       payload_len <= max_payload && gso_segs <= 1;
}

#endif
