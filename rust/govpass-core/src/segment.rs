//! Building a TCP segment from the headers of an original packet.

use crate::checksum;
use crate::packet::{flags, TcpPacket};
use crate::seq::Seq;

/// Which of the template's PSH/FIN flags a new segment keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Not the last segment cut from the template's bytes: PSH and FIN cleared.
    Inner,
    /// The last segment: the template's own PSH/FIN are kept.
    Last,
    /// The last segment of a split window: PSH set, FIN as in the template.
    LastPush,
}

/// A new packet carrying `payload` at `seq`, with the IP and TCP headers
/// (options included) of `template`. Lengths and checksums are recomputed;
/// ack, window, IP id and everything else are kept.
pub fn build(template: &TcpPacket<'_>, seq: Seq, payload: &[u8], tail: Tail) -> Vec<u8> {
    let header_len = template.payload_offset;
    let total = header_len + payload.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&template.bytes[..header_len]);
    out.extend_from_slice(payload);

    let t = template.tcp_offset;
    out[t + 4..t + 8].copy_from_slice(&seq.0.to_be_bytes());
    let mut f = template.flags;
    match tail {
        Tail::Inner => f &= !(flags::PSH | flags::FIN),
        Tail::Last => {}
        Tail::LastPush => f |= flags::PSH,
    }
    out[t + 13] = f;
    out[t + 16..t + 18].copy_from_slice(&[0, 0]);

    let key = &template.key;
    if key.v6 {
        // Payload length counts extension headers too: everything after the
        // fixed 40-byte header.
        out[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        let sum = checksum::tcp_ipv6(key.src, key.dst, &out[t..]);
        out[t + 16..t + 18].copy_from_slice(&sum.to_be_bytes());
    } else {
        out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        out[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum::ipv4_header(&out[..t]);
        out[10..12].copy_from_slice(&sum.to_be_bytes());
        let src = [key.src[0], key.src[1], key.src[2], key.src[3]];
        let dst = [key.dst[0], key.dst[1], key.dst[2], key.dst[3]];
        let sum = checksum::tcp_ipv4(src, dst, &out[t..]);
        out[t + 16..t + 18].copy_from_slice(&sum.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::parse;
    use crate::packet::tests::{ipv4_tcp, ipv4_tcp_opts, ipv6_tcp};

    #[test]
    fn rebuilding_the_whole_payload_gives_back_the_original() {
        let opts = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
        let orig = ipv4_tcp_opts(5000, flags::PSH, &opts, b"0123456789");
        let t = parse(&orig).unwrap();
        assert_eq!(build(&t, t.seq, t.payload(), Tail::Last), orig);
        let orig6 = ipv6_tcp(9, flags::PSH, b"abcdef", true);
        let t6 = parse(&orig6).unwrap();
        assert_eq!(build(&t6, t6.seq, t6.payload(), Tail::Last), orig6);
    }

    #[test]
    fn inner_segments_drop_psh_and_carry_their_own_seq() {
        let orig = ipv4_tcp(u32::MAX - 1, flags::PSH, b"0123456789");
        let t = parse(&orig).unwrap();
        let seg = build(&t, t.seq.plus(5), &t.payload()[5..], Tail::Inner);
        let s = parse(&seg).unwrap();
        assert_eq!(s.seq, Seq(3));
        assert!(!s.has(flags::PSH));
        assert_eq!(s.payload(), b"56789");
        assert_eq!(seg.len(), 45);
        // Checksums verify: a correct packet sums to zero.
        assert_eq!(checksum::ipv4_header(&seg[..20]), 0);
        let sum = checksum::tcp_ipv4([198, 51, 100, 2], [203, 0, 113, 9], &seg[20..]);
        assert_eq!(sum, 0);
    }
}
