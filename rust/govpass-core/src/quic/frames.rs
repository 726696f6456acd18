//! Variable-length integers (RFC 9000 §16) and the frames an Initial packet
//! may carry (RFC 9000 §12.4, Table 3).

use super::QuicError;

const PADDING: u8 = 0x00;
const PING: u8 = 0x01;
const ACK: u8 = 0x02;
const ACK_ECN: u8 = 0x03;
const CRYPTO: u8 = 0x06;
const CONNECTION_CLOSE: u8 = 0x1c;
const CONNECTION_CLOSE_APP: u8 = 0x1d;

/// One CRYPTO frame: `data` at `offset` of the connection's CRYPTO stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoFrame {
    pub offset: u64,
    pub data: Vec<u8>,
}

/// The variable-length integer at `pos`: (value, position after it).
pub fn varint(buf: &[u8], pos: usize) -> Result<(u64, usize), QuicError> {
    let first = *buf.get(pos).ok_or(QuicError::VarintPastEnd)?;
    let size = 1usize << (first >> 6);
    let end = pos.checked_add(size).ok_or(QuicError::VarintPastEnd)?;
    let rest = buf.get(pos + 1..end).ok_or(QuicError::VarintPastEnd)?;
    let value = rest
        .iter()
        .fold(u64::from(first & 0x3f), |acc, &b| (acc << 8) | u64::from(b));
    Ok((value, end))
}

/// `pos + len`, if it stays inside `n` bytes.
fn advance(pos: usize, len: u64, n: usize, err: QuicError) -> Result<usize, QuicError> {
    usize::try_from(len)
        .ok()
        .and_then(|len| pos.checked_add(len))
        .filter(|&stop| stop <= n)
        .ok_or(err)
}

/// Every CRYPTO frame of an Initial packet's plaintext, in packet order.
///
/// Knows the frames an Initial may carry (PADDING, PING, ACK, CRYPTO,
/// CONNECTION_CLOSE); any other frame, or one cut short, is an error.
pub fn crypto_frames(plain: &[u8]) -> Result<Vec<CryptoFrame>, QuicError> {
    let mut out = Vec::new();
    let n = plain.len();
    let mut pos = 0;
    while let Some(&kind) = plain.get(pos) {
        pos += 1;
        match kind {
            PADDING => {
                pos = plain[pos..]
                    .iter()
                    .position(|&b| b != PADDING)
                    .map_or(n, |skip| pos + skip);
            }
            PING => {}
            ACK | ACK_ECN => {
                let (_largest, p) = varint(plain, pos)?;
                let (_delay, p) = varint(plain, p)?;
                let (ranges, p) = varint(plain, p)?;
                let (_first, p) = varint(plain, p)?;
                pos = p;
                // Each range takes at least 2 bytes.
                let ranges = usize::try_from(ranges)
                    .ok()
                    .filter(|&r| r <= n)
                    .ok_or(QuicError::AckRangesTooMany)?;
                let fields = 2 * ranges + if kind == ACK_ECN { 3 } else { 0 };
                for _ in 0..fields {
                    pos = varint(plain, pos)?.1;
                }
            }
            CRYPTO => {
                let (offset, p) = varint(plain, pos)?;
                let (length, p) = varint(plain, p)?;
                let stop = advance(p, length, n, QuicError::CryptoFramePastEnd)?;
                out.push(CryptoFrame {
                    offset,
                    data: plain[p..stop].to_vec(),
                });
                pos = stop;
            }
            CONNECTION_CLOSE | CONNECTION_CLOSE_APP => {
                let (_code, mut p) = varint(plain, pos)?;
                if kind == CONNECTION_CLOSE {
                    p = varint(plain, p)?.1; // the frame type that caused it
                }
                let (reason, p) = varint(plain, p)?;
                pos = advance(p, reason, n, QuicError::CloseReasonPastEnd)?;
            }
            other => return Err(QuicError::FrameNotAllowed(other)),
        }
    }
    Ok(out)
}
