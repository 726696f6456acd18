//! Parsing captured IP packets into a checked TCP view.
//!
//! This is the edge: etherparse checks every length once, and past this module
//! nothing re-checks them. A packet whose IP length claims more bytes than were
//! captured is reported as truncated and is never modified.

use etherparse::{ip_number, IpSlice, Ipv6ExtensionSlice, LaxIpSlice, TcpSlice};

use crate::seq::Seq;

/// TCP flag bits (byte 13 of the TCP header).
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// The 5-tuple of a TCP flow (the protocol is always TCP). IPv4 addresses are
/// stored in the first four bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub v6: bool,
}

/// Why a packet is not a TCP packet the engine could reshape.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Skip {
    /// Not IPv4/IPv6, or headers malformed.
    Malformed,
    /// An IP fragment: only whole packets are reshaped.
    Fragment,
    /// Not TCP, or TCP behind headers we do not rewrite (IPsec AH, IPv6 routing).
    NotTcp,
    /// The IP length says more bytes exist than were captured. The flow key is
    /// known when the headers themselves were captured.
    Truncated(Option<FlowKey>),
}

/// A TCP packet over IPv4 or IPv6, with all offsets checked.
#[derive(Clone, Copy, Debug)]
pub struct TcpPacket<'a> {
    /// The packet up to the IP length (link padding beyond it excluded).
    pub bytes: &'a [u8],
    /// Offset of the TCP header (= length of the IP header and extensions).
    pub tcp_offset: usize,
    /// Offset of the TCP payload.
    pub payload_offset: usize,
    pub key: FlowKey,
    pub seq: Seq,
    pub flags: u8,
}

impl<'a> TcpPacket<'a> {
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[self.payload_offset..]
    }
    #[inline]
    pub fn payload_len(&self) -> usize {
        self.bytes.len() - self.payload_offset
    }
    #[inline]
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

fn key_from(src: std::net::IpAddr, dst: std::net::IpAddr, sport: u16, dport: u16) -> FlowKey {
    use std::net::IpAddr;
    let mut key = FlowKey {
        src: [0; 16],
        dst: [0; 16],
        sport,
        dport,
        v6: false,
    };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            key.src[..4].copy_from_slice(&s.octets());
            key.dst[..4].copy_from_slice(&d.octets());
        }
        (s, d) => {
            key.v6 = true;
            key.src = to_v6(s);
            key.dst = to_v6(d);
        }
    }
    key
}

fn to_v6(a: std::net::IpAddr) -> [u8; 16] {
    match a {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    }
}

/// Cheap look at the destination port of an unfragmented IPv4 TCP packet, so
/// traffic to other ports is skipped without full parsing. `None` when the
/// packet is anything else (the full parser then decides).
#[inline]
pub fn quick_ipv4_dport(data: &[u8]) -> Option<u16> {
    let ver_ihl = *data.first()?;
    if ver_ihl >> 4 != 4 || *data.get(9)? != 6 {
        return None;
    }
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    let dport = data.get(ihl + 2..ihl + 4)?;
    Some(u16::from_be_bytes([dport[0], dport[1]]))
}

/// Parses `data` (starting at the IP header) into a [`TcpPacket`].
pub fn parse(data: &[u8]) -> Result<TcpPacket<'_>, Skip> {
    if declares_jumbo(data) {
        return Err(Skip::Malformed);
    }
    let ip = match IpSlice::from_slice(data) {
        Ok(ip) => ip,
        Err(_) => return Err(classify_failure(data)),
    };
    if ip.is_fragmenting_payload() {
        return Err(Skip::Fragment);
    }
    let clean_headers = match &ip {
        IpSlice::Ipv4(v4) => v4.extensions().is_empty(),
        IpSlice::Ipv6(v6) => v6.extensions().clone().into_iter().all(|ext| {
            matches!(
                ext,
                Ipv6ExtensionSlice::HopByHop(_) | Ipv6ExtensionSlice::DestinationOptions(_)
            )
        }),
    };
    let payload = ip.payload();
    if payload.ip_number != ip_number::TCP || !clean_headers {
        return Err(Skip::NotTcp);
    }
    let tcp = TcpSlice::from_slice(payload.payload).map_err(|_| Skip::Malformed)?;
    let tcp_offset = payload.payload.as_ptr() as usize - data.as_ptr() as usize;
    let end = tcp_offset + payload.payload.len();
    let header_len = usize::from(tcp.data_offset()) * 4;
    let key = key_from(
        ip.source_addr(),
        ip.destination_addr(),
        tcp.source_port(),
        tcp.destination_port(),
    );
    Ok(TcpPacket {
        bytes: &data[..end],
        tcp_offset,
        payload_offset: tcp_offset + header_len,
        key,
        seq: Seq(tcp.sequence_number()),
        flags: tcp.slice()[13],
    })
}

/// Whether `data` is an IPv6 header whose payload length is 0. etherparse
/// reads that as a jumbogram and takes the whole buffer as the payload, with
/// or without a hop-by-hop jumbo option; the engine then used bytes the header
/// never declared (capture padding or a truncated copy). Real jumbograms
/// (RFC 2675) are not supported on purpose: they need a link MTU above
/// 65,575 bytes, and a ClientHello never needs one, so they pass untouched
/// like any packet the engine will not reshape.
fn declares_jumbo(data: &[u8]) -> bool {
    data.len() >= 6 && data[0] >> 4 == 6 && data[4] == 0 && data[5] == 0
}

/// After a strict parse failed: was the packet cut short by the capture? If
/// so, try to recover its flow key from the bytes that were captured.
fn classify_failure(data: &[u8]) -> Skip {
    let Ok((lax, _)) = LaxIpSlice::from_slice(data) else {
        return Skip::Malformed;
    };
    let payload = lax.payload();
    if !payload.incomplete {
        return Skip::Malformed;
    }
    if payload.ip_number != ip_number::TCP {
        return Skip::Truncated(None);
    }
    let p = payload.payload;
    let key = (p.len() >= 4).then(|| {
        let sport = u16::from_be_bytes([p[0], p[1]]);
        let dport = u16::from_be_bytes([p[2], p[3]]);
        key_from(lax.source_addr(), lax.destination_addr(), sport, dport)
    });
    Skip::Truncated(key)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::checksum;

    /// Builds an IPv4/TCP packet with valid checksums.
    pub fn ipv4_tcp(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        ipv4_tcp_opts(seq, flags, &[], payload)
    }

    pub fn ipv4_tcp_opts(seq: u32, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
        assert_eq!(options.len() % 4, 0);
        let tcp_len = 20 + options.len();
        let total = 20 + tcp_len + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[198, 51, 100, 2]);
        p[16..20].copy_from_slice(&[203, 0, 113, 9]);
        let t = 20;
        p[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
        p[t + 2..t + 4].copy_from_slice(&443u16.to_be_bytes());
        p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        p[t + 8..t + 12].copy_from_slice(&777u32.to_be_bytes());
        p[t + 12] = ((tcp_len / 4) as u8) << 4;
        p[t + 13] = flags | 0x10;
        p[t + 14..t + 16].copy_from_slice(&502u16.to_be_bytes());
        p[t + 20..t + tcp_len].copy_from_slice(options);
        p[t + tcp_len..].copy_from_slice(payload);
        let c = checksum::ipv4_header(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let c = checksum::tcp_ipv4([198, 51, 100, 2], [203, 0, 113, 9], &p[20..]);
        p[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// Builds an IPv6/TCP packet, optionally behind a destination-options header.
    pub fn ipv6_tcp(seq: u32, flags: u8, payload: &[u8], dest_opts: bool) -> Vec<u8> {
        let ext: &[u8] = if dest_opts {
            &[6, 0, 1, 4, 0, 0, 0, 0]
        } else {
            &[]
        };
        let tcp_len = 20;
        let plen = ext.len() + tcp_len + payload.len();
        let mut p = vec![0u8; 40 + plen];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(plen as u16).to_be_bytes());
        p[6] = if dest_opts { 60 } else { 6 };
        p[7] = 64;
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        src[15] = 2;
        let mut dst = src;
        dst[15] = 9;
        p[8..24].copy_from_slice(&src);
        p[24..40].copy_from_slice(&dst);
        p[40..40 + ext.len()].copy_from_slice(ext);
        let t = 40 + ext.len();
        p[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
        p[t + 2..t + 4].copy_from_slice(&443u16.to_be_bytes());
        p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        p[t + 12] = 5 << 4;
        p[t + 13] = flags | 0x10;
        p[t + 20..].copy_from_slice(payload);
        let c = checksum::tcp_ipv6(src, dst, &p[t..]);
        p[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn parses_ipv4_tcp() {
        let p = ipv4_tcp(1000, flags::PSH, b"hello");
        let t = parse(&p).unwrap();
        assert_eq!(t.tcp_offset, 20);
        assert_eq!(t.payload(), b"hello");
        assert_eq!(t.seq, Seq(1000));
        assert!(t.has(flags::PSH) && !t.has(flags::SYN));
        assert_eq!(t.key.dport, 443);
        assert_eq!(&t.key.dst[..4], &[203, 0, 113, 9]);
        assert_eq!(quick_ipv4_dport(&p), Some(443));
    }

    #[test]
    fn link_padding_is_not_payload() {
        let mut p = ipv4_tcp(1, 0, b"");
        p.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let t = parse(&p).unwrap();
        assert_eq!(t.payload_len(), 0);
        assert_eq!(t.bytes.len(), 40);
    }

    #[test]
    fn ipv6_skips_destination_options() {
        let p = ipv6_tcp(5, 0, b"abc", true);
        let t = parse(&p).unwrap();
        assert_eq!(t.tcp_offset, 48);
        assert_eq!(t.payload(), b"abc");
        assert!(t.key.v6);
    }

    #[test]
    fn truncated_capture_is_reported_with_key() {
        let p = ipv4_tcp(1, 0, &[0x16; 100]);
        match parse(&p[..80]) {
            Err(Skip::Truncated(Some(k))) => assert_eq!(k.dport, 443),
            other => panic!("{other:?}"),
        }
        let p = ipv6_tcp(1, 0, &[0x16; 100], false);
        assert!(matches!(parse(&p[..70]), Err(Skip::Truncated(Some(_)))));
    }

    #[test]
    fn ipv6_payload_length_zero_is_never_a_jumbogram() {
        // Without a jumbo option: the header declares no payload at all.
        let mut p = ipv6_tcp(1, 0, &[0x16; 1538], false);
        p[4..6].copy_from_slice(&[0, 0]);
        assert_eq!(parse(&p).unwrap_err(), Skip::Malformed);
        assert_eq!(parse(&p[..600]).unwrap_err(), Skip::Malformed);
        // With a real hop-by-hop jumbo option (RFC 2675): refused too.
        let body = ipv6_tcp(1, 0, &[0x16; 64], false);
        let mut j = body[..40].to_vec();
        j[4..6].copy_from_slice(&[0, 0]);
        j[6] = 0; // hop-by-hop
        let jumbo_len = (8 + body.len() - 40) as u32;
        j.extend_from_slice(&[6, 0, 0xc2, 4]);
        j.extend_from_slice(&jumbo_len.to_be_bytes());
        j.extend_from_slice(&body[40..]);
        assert_eq!(parse(&j).unwrap_err(), Skip::Malformed);
    }

    #[test]
    fn fragments_and_other_protocols_are_skipped() {
        let mut p = ipv4_tcp(1, 0, b"x");
        p[6] = 0x20; // more fragments
        assert_eq!(parse(&p).unwrap_err(), Skip::Fragment);
        let mut p = ipv4_tcp(1, 0, b"x");
        p[9] = 17;
        assert!(matches!(parse(&p), Err(Skip::NotTcp | Skip::Malformed)));
        assert_eq!(parse(&[]).unwrap_err(), Skip::Malformed);
        assert_eq!(parse(&[0x45, 0, 0]).unwrap_err(), Skip::Malformed);
    }
}
