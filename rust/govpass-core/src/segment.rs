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

/// Flags a generated segment may inherit from its template. SYN, RST and
/// URG are never copied: a packet carrying them is not split (the engine
/// fails open first), since copying them would reset the connection once per
/// segment or point every segment's urgent pointer at the wrong byte.
const INHERITED: u8 = flags::ACK | flags::PSH | flags::FIN | flags::ECE | flags::CWR;

/// The largest payload a segment built from headers of `header_len` bytes
/// may carry so that the whole packet stays within `max_seg_payload + 40`
/// bytes (max-seg-payload is meant for bare 20-byte IPv4 and TCP headers;
/// TCP and IP options and IPv6's longer header take their bytes off it).
/// 0 when not even one byte fits.
pub fn payload_cap(max_seg_payload: u32, header_len: usize) -> u32 {
    let extra = u32::try_from(header_len.saturating_sub(40)).unwrap_or(u32::MAX);
    max_seg_payload.saturating_sub(extra)
}

/// A new packet carrying `payload` at `seq`, with the IP and TCP headers
/// (options included) of `template`. Lengths and checksums are recomputed;
/// ack, window, IP id and everything else are kept. CWR stays only on the
/// segment that starts where the template starts (it marks the first data
/// sent after the window was reduced), PSH and FIN follow `tail`.
pub fn build(template: &TcpPacket<'_>, seq: Seq, payload: &[u8], tail: Tail) -> Vec<u8> {
    let header_len = template.payload_offset;
    let total = header_len + payload.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&template.bytes[..header_len]);
    out.extend_from_slice(payload);

    let t = template.tcp_offset;
    out[t + 4..t + 8].copy_from_slice(&seq.0.to_be_bytes());
    let mut f = template.flags & INHERITED;
    if seq != template.seq {
        f &= !flags::CWR;
    }
    match tail {
        Tail::Inner => f &= !(flags::PSH | flags::FIN),
        Tail::Last => {}
        Tail::LastPush => f |= flags::PSH,
    }
    out[t + 13] = f;
    out[t + 16..t + 18].copy_from_slice(&[0, 0]);
    if template.has(flags::URG) {
        out[t + 18..t + 20].copy_from_slice(&[0, 0]);
    }

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
    fn segments_never_inherit_syn_rst_or_urg_and_cwr_only_at_the_start() {
        let all = flags::FIN | flags::SYN | flags::RST | flags::PSH | flags::URG;
        let mut orig = ipv4_tcp(100, all | flags::ECE | flags::CWR, b"0123456789");
        orig[38..40].copy_from_slice(&3u16.to_be_bytes()); // urgent pointer
        let t = parse(&orig).unwrap();
        let first = parse_owned(build(&t, t.seq, &t.payload()[..4], Tail::Inner));
        assert_eq!(first.0, flags::ACK | flags::ECE | flags::CWR);
        assert_eq!(first.1, 0, "urgent pointer cleared");
        let last = parse_owned(build(&t, t.seq.plus(4), &t.payload()[4..], Tail::Last));
        assert_eq!(last.0, flags::ACK | flags::ECE | flags::PSH | flags::FIN);
    }

    /// (flags, urgent pointer) of a built packet.
    fn parse_owned(p: Vec<u8>) -> (u8, u16) {
        let v = parse(&p).unwrap();
        let t = v.tcp_offset;
        (v.flags, u16::from_be_bytes([p[t + 18], p[t + 19]]))
    }

    #[test]
    fn payload_cap_keeps_every_packet_within_max_seg_payload_plus_40() {
        assert_eq!(payload_cap(1460, 40), 1460);
        assert_eq!(payload_cap(1460, 52), 1448);
        assert_eq!(payload_cap(1460, 60 + 40), 1400);
        assert_eq!(payload_cap(30, 100), 0);
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
