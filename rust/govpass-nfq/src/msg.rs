//! nfnetlink_queue messages: the packets the kernel queues, and verdicts.
//!
//! Layout (include/uapi/linux/netfilter/nfnetlink_queue.h): a netlink header
//! (16 bytes, host order), an nfgenmsg (family, version, queue number in
//! network order), then attributes (length and type in host order, each
//! padded to 4 bytes; the values of this subsystem are in network order).

/// `NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_PACKET`
pub const MSG_PACKET: u16 = 3 << 8;
/// `NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_VERDICT`
pub const MSG_VERDICT: u16 = (3 << 8) | 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_MARK: u16 = 3;
const NFQA_IFINDEX_OUTDEV: u16 = 5;
const NFQA_PAYLOAD: u16 = 10;
const NLA_TYPE_MASK: u16 = 0x3fff;

pub const NF_DROP: u32 = 0;
pub const NF_ACCEPT: u32 = 1;

/// One queued packet, borrowed from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    pub id: u32,
    pub mark: u32,
    /// Output interface index (0: none, e.g. a packet on its way in).
    pub outdev: u32,
    /// The IP packet, as much as the copy range let through.
    pub payload: &'a [u8],
}

/// One netlink message of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Packet(Packet<'a>),
    /// A negative errno the kernel answered with (e.g. a verdict for an
    /// unknown packet id).
    Error(i32),
    /// Anything else (acks, other types): nothing to do.
    Other,
}

fn u16_ne(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}

fn u32_ne(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

fn u32_be(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The messages of one received datagram, in order; stops at the first
/// malformed header (a truncated datagram yields what came before it).
pub fn messages(buf: &[u8]) -> Messages<'_> {
    Messages { rest: buf }
}

pub struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Messages<'a> {
    type Item = Message<'a>;

    fn next(&mut self) -> Option<Message<'a>> {
        if self.rest.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32_ne(&self.rest[0..4]) as usize;
        if len < NLMSG_HDRLEN || len > self.rest.len() {
            self.rest = &[];
            return None;
        }
        let kind = u16_ne(&self.rest[4..6]);
        let body = &self.rest[NLMSG_HDRLEN..len];
        self.rest = &self.rest[align4(len).min(self.rest.len())..];
        Some(match kind {
            MSG_PACKET => parse_packet(body).map_or(Message::Other, Message::Packet),
            NLMSG_ERROR if body.len() >= 4 => {
                let code = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                if code == 0 {
                    Message::Other
                } else {
                    Message::Error(code)
                }
            }
            _ => Message::Other,
        })
    }
}

/// A packet message's body (after the netlink header); None without the
/// packet header or payload.
fn parse_packet(body: &[u8]) -> Option<Packet<'_>> {
    let mut rest = body.get(NFGENMSG_LEN..)?;
    let (mut id, mut mark, mut outdev, mut payload) = (None, 0, 0, None);
    while rest.len() >= 4 {
        let len = usize::from(u16_ne(&rest[0..2]));
        let kind = u16_ne(&rest[2..4]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            break;
        }
        let value = &rest[4..len];
        match kind {
            NFQA_PACKET_HDR if value.len() >= 4 => id = Some(u32_be(value)),
            NFQA_MARK if value.len() >= 4 => mark = u32_be(value),
            NFQA_IFINDEX_OUTDEV if value.len() >= 4 => outdev = u32_be(value),
            NFQA_PAYLOAD => payload = Some(value),
            _ => {}
        }
        rest = &rest[align4(len).min(rest.len())..];
    }
    Some(Packet {
        id: id?,
        mark,
        outdev,
        payload: payload?,
    })
}

fn push_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + (align4(len) - len), 0);
}

/// Appends one verdict message (for packet `id` of `queue`) to `out`; with
/// `mark`, the packet leaves carrying that mark; with `packet`, it leaves as
/// these bytes instead of its own (IP header first, the same flow: the kernel
/// keeps its route, socket and connection tracking). Several messages may
/// share one `send`.
pub fn push_verdict(
    out: &mut Vec<u8>,
    queue: u16,
    id: u32,
    verdict: u32,
    mark: Option<u32>,
    packet: Option<&[u8]>,
) {
    let start = out.len();
    out.extend_from_slice(&[0; NLMSG_HDRLEN]);
    out.extend_from_slice(&[0, 0]); // AF_UNSPEC, NFNETLINK_V0
    out.extend_from_slice(&queue.to_be_bytes());
    let mut hdr = [0u8; 8];
    hdr[..4].copy_from_slice(&verdict.to_be_bytes());
    hdr[4..].copy_from_slice(&id.to_be_bytes());
    push_attr(out, NFQA_VERDICT_HDR, &hdr);
    if let Some(mark) = mark {
        push_attr(out, NFQA_MARK, &mark.to_be_bytes());
    }
    if let Some(packet) = packet {
        push_attr(out, NFQA_PAYLOAD, packet);
    }
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    out[start + 4..start + 6].copy_from_slice(&MSG_VERDICT.to_ne_bytes());
    out[start + 6..start + 8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    // seq and pid stay 0: the kernel does not answer verdicts without NLM_F_ACK.
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet message as the kernel builds it.
    fn packet_msg(id: u32, mark: Option<u32>, outdev: Option<u32>, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0; NLMSG_HDRLEN];
        out.extend_from_slice(&[2, 0, 0, 200]); // AF_INET, v0, queue 200
        let mut hdr = id.to_be_bytes().to_vec();
        hdr.extend_from_slice(&[0x08, 0x00, 3]); // hw protocol, hook
        push_attr(&mut out, NFQA_PACKET_HDR, &hdr);
        if let Some(m) = mark {
            push_attr(&mut out, NFQA_MARK, &m.to_be_bytes());
        }
        if let Some(o) = outdev {
            push_attr(&mut out, NFQA_IFINDEX_OUTDEV, &o.to_be_bytes());
        }
        push_attr(&mut out, NFQA_PAYLOAD | 0x4000, payload); // flag bits are ignored
        let len = out.len() as u32;
        out[0..4].copy_from_slice(&len.to_ne_bytes());
        out[4..6].copy_from_slice(&MSG_PACKET.to_ne_bytes());
        out
    }

    #[test]
    fn a_packet_message_yields_id_mark_device_and_payload() {
        let buf = packet_msg(7, Some(0x10), Some(3), b"\x45abcde");
        let got: Vec<_> = messages(&buf).collect();
        assert_eq!(
            got,
            vec![Message::Packet(Packet {
                id: 7,
                mark: 0x10,
                outdev: 3,
                payload: b"\x45abcde"
            })]
        );
    }

    #[test]
    fn several_messages_in_one_datagram_come_in_order() {
        let mut buf = packet_msg(1, None, None, b"abc");
        buf.extend(packet_msg(2, None, None, b"defgh"));
        let ids: Vec<u32> = messages(&buf)
            .map(|m| match m {
                Message::Packet(p) => p.id,
                _ => 0,
            })
            .collect();
        assert_eq!(ids, vec![1, 2]);
    }

    #[test]
    fn missing_parts_and_truncation_give_no_packet() {
        let mut no_payload = vec![0; NLMSG_HDRLEN];
        no_payload.extend_from_slice(&[2, 0, 0, 200]);
        push_attr(&mut no_payload, NFQA_PACKET_HDR, &[0, 0, 0, 9, 8, 0, 3]);
        let len = no_payload.len() as u32;
        no_payload[0..4].copy_from_slice(&len.to_ne_bytes());
        no_payload[4..6].copy_from_slice(&MSG_PACKET.to_ne_bytes());
        assert_eq!(
            messages(&no_payload).collect::<Vec<_>>(),
            vec![Message::Other]
        );

        let whole = packet_msg(3, None, None, b"0123456789");
        assert_eq!(messages(&whole[..whole.len() - 4]).count(), 0);
        assert_eq!(messages(&whole[..10]).count(), 0);
        assert_eq!(messages(&[]).count(), 0);
    }

    #[test]
    fn an_error_message_carries_its_errno() {
        let mut buf = vec![0; NLMSG_HDRLEN];
        buf.extend_from_slice(&(-2i32).to_ne_bytes());
        buf.extend_from_slice(&[0; NLMSG_HDRLEN]); // the request's header
        let len = buf.len() as u32;
        buf[0..4].copy_from_slice(&len.to_ne_bytes());
        buf[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(messages(&buf).collect::<Vec<_>>(), vec![Message::Error(-2)]);
    }

    #[test]
    fn a_verdict_message_has_the_kernel_layout() {
        let mut out = Vec::new();
        push_verdict(&mut out, 200, 0x01020304, NF_ACCEPT, Some(0x10000000), None);
        assert_eq!(out.len(), 16 + 4 + 12 + 8);
        assert_eq!(u32_ne(&out[0..4]) as usize, out.len());
        assert_eq!(u16_ne(&out[4..6]), MSG_VERDICT);
        assert_eq!(u16_ne(&out[6..8]), NLM_F_REQUEST);
        assert_eq!(&out[16..20], &[0, 0, 0, 200]);
        assert_eq!(u16_ne(&out[20..22]), 12);
        assert_eq!(u16_ne(&out[22..24]), NFQA_VERDICT_HDR);
        assert_eq!(&out[24..32], &[0, 0, 0, 1, 1, 2, 3, 4]);
        assert_eq!(u16_ne(&out[34..36]), NFQA_MARK);
        assert_eq!(&out[36..40], &[0x10, 0, 0, 0]);

        push_verdict(&mut out, 200, 5, NF_DROP, None, None);
        assert_eq!(out.len(), 40 + 32);
        let second = &out[40..];
        assert_eq!(u32_ne(&second[0..4]), 32);
        assert_eq!(&second[24..32], &[0, 0, 0, 0, 0, 0, 0, 5]);
    }

    #[test]
    fn a_verdict_may_carry_the_packet_to_send_instead() {
        let mut out = Vec::new();
        push_verdict(&mut out, 7, 9, NF_ACCEPT, None, Some(b"\x45abcdef"));
        // header, nfgenmsg, verdict header, then the 7-byte packet padded to 8
        assert_eq!(out.len(), 16 + 4 + 12 + 12);
        assert_eq!(u32_ne(&out[0..4]) as usize, out.len());
        assert_eq!(u16_ne(&out[32..34]), 4 + 7);
        assert_eq!(u16_ne(&out[34..36]), NFQA_PAYLOAD);
        assert_eq!(&out[36..43], b"\x45abcdef");
        assert_eq!(out[43], 0);
    }
}
