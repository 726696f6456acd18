//! QUIC client Initial packets: the long header (RFC 9000 §17.2), the
//! Initial packet protection (RFC 9001 §5, and RFC 9369 for QUIC v2), the
//! CRYPTO frames and the server name of the ClientHello they carry.
//!
//! Anyone on the path can remove the Initial protection: the keys follow from
//! the Destination Connection ID and a salt published in the RFC. What comes
//! in is whatever a stranger put in a UDP datagram, so every step answers
//! with a [`QuicError`] instead of panicking, and every length sum is
//! checked.
//!
//! The pieces, in the order a datagram goes through them:
//! [`parse_long_header`], [`initial_frames`] (which uses [`crypto`] and
//! [`frames`] on the Initial and on the Initials of the same connection
//! coalesced after it), [`CryptoStream`] (CRYPTO data of one connection over
//! one or more packets) and its [`CryptoStream::server_name`].
//! [`initial_sni`] chains them for a single datagram.

pub mod crypto;
pub mod frames;
mod stream;

pub use crypto::InitialKeys;
pub use frames::{crypto_frames, varint, CryptoFrame};
pub use stream::{handshake_server_name, CryptoStream, ServerName, DEFAULT_MAX_PIECES};

/// QUIC version 1 (RFC 9000).
pub const QUIC_V1: u32 = 0x0000_0001;
/// QUIC version 2 (RFC 9369).
pub const QUIC_V2: u32 = 0x6b33_43cf;

/// RFC 9000 §17.2: connection IDs of versions 1 and 2 are at most 20 bytes.
pub const MAX_CID_LEN: usize = 20;
/// The CRYPTO stream bytes [`initial_sni`] follows (the default of the
/// `--block-quic listed` filter).
pub const DEFAULT_MAX_CRYPTO: usize = 16384;

/// Why a datagram gives no CRYPTO data (or no name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuicError {
    /// Shorter than a long header's fixed part, or the form bit is 0.
    NotLongHeader,
    /// A connection ID (or the byte giving its length) lies past the end.
    TruncatedConnectionId,
    /// A connection ID longer than 20 bytes in a version that forbids it.
    ConnectionIdTooLong,
    /// A variable-length integer runs past the end of its buffer.
    VarintPastEnd,
    /// The Length field of the packet reaches past the datagram.
    PacketPastDatagram,
    /// A version other than 1 and 2: its packets cannot be read.
    UnknownVersion,
    /// A long-header packet of a known version that is not an Initial.
    NotInitial,
    /// The packet is too short to hold the header protection sample.
    TooShortForSample,
    /// The payload does not decrypt with the Initial keys of its DCID.
    DecryptFailed,
    /// A frame type that an Initial packet cannot carry (RFC 9000 §12.4).
    FrameNotAllowed(u8),
    /// A CRYPTO frame longer than the rest of the packet.
    CryptoFramePastEnd,
    /// An ACK frame claiming more ranges than the packet has bytes.
    AckRangesTooMany,
    /// A CONNECTION_CLOSE reason phrase longer than the rest of the packet.
    CloseReasonPastEnd,
    /// The CRYPTO data reaches past the bytes followed, or in too many pieces.
    CryptoTooLarge,
}

impl QuicError {
    /// A short fixed name (never derived from the input).
    pub fn as_str(self) -> &'static str {
        match self {
            QuicError::NotLongHeader => "not a long-header packet",
            QuicError::TruncatedConnectionId => "truncated connection id",
            QuicError::ConnectionIdTooLong => "connection id longer than 20 bytes",
            QuicError::VarintPastEnd => "varint past the end",
            QuicError::PacketPastDatagram => "packet longer than the datagram",
            QuicError::UnknownVersion => "unknown version",
            QuicError::NotInitial => "not an Initial packet",
            QuicError::TooShortForSample => "packet too short for the header protection sample",
            QuicError::DecryptFailed => "does not decrypt with the Initial keys",
            QuicError::FrameNotAllowed(_) => "frame type not allowed in an Initial packet",
            QuicError::CryptoFramePastEnd => "CRYPTO frame longer than the packet",
            QuicError::AckRangesTooMany => "ACK range count larger than the packet",
            QuicError::CloseReasonPastEnd => "CONNECTION_CLOSE reason longer than the packet",
            QuicError::CryptoTooLarge => "CRYPTO data larger than followed",
        }
    }
}

/// Long-header packet types, by meaning (the wire bits differ by version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    Initial,
    ZeroRtt,
    Handshake,
    Retry,
}

impl PacketType {
    pub fn as_str(self) -> &'static str {
        match self {
            PacketType::Initial => "initial",
            PacketType::ZeroRtt => "0rtt",
            PacketType::Handshake => "handshake",
            PacketType::Retry => "retry",
        }
    }
}

/// What differs between the QUIC versions for a client's Initial packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn from_wire(version: u32) -> Option<Version> {
        match version {
            QUIC_V1 => Some(Version::V1),
            QUIC_V2 => Some(Version::V2),
            _ => None,
        }
    }

    pub fn wire(self) -> u32 {
        match self {
            Version::V1 => QUIC_V1,
            Version::V2 => QUIC_V2,
        }
    }

    /// The packet type the two type bits (after the form and fixed bits) name.
    pub fn packet_type(self, bits: u8) -> PacketType {
        // RFC 9369 §3.2: v2 shuffled the type bits on purpose.
        const V1: [PacketType; 4] = [
            PacketType::Initial,
            PacketType::ZeroRtt,
            PacketType::Handshake,
            PacketType::Retry,
        ];
        const V2: [PacketType; 4] = [
            PacketType::Retry,
            PacketType::Initial,
            PacketType::ZeroRtt,
            PacketType::Handshake,
        ];
        let table = match self {
            Version::V1 => &V1,
            Version::V2 => &V2,
        };
        table[usize::from(bits & 0x03)]
    }

    /// The two type bits of `kind` in this version.
    pub fn type_bits(self, kind: PacketType) -> u8 {
        (0..4u8)
            .find(|&bits| self.packet_type(bits) == kind)
            .unwrap_or(0)
    }
}

/// A long header as far as it is not protected: enough to find an Initial's
/// packet number and the end of the packet within its datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongHeader<'a> {
    /// Offset of the packet in the datagram (packets may be coalesced).
    pub start: usize,
    pub version: u32,
    pub dcid: &'a [u8],
    /// `None`: a version this module does not know (nothing past the
    /// connection IDs is read then).
    pub kind: Option<PacketType>,
    /// Initial, 0-RTT, Handshake: where the protected packet number starts;
    /// otherwise the end of the connection IDs.
    pub pn_offset: usize,
    /// Initial, 0-RTT, Handshake: the end of the packet; otherwise the end
    /// of the datagram.
    pub end: usize,
}

/// Parses the long header of the packet at `start` of `buf`.
pub fn parse_long_header(buf: &[u8], start: usize) -> Result<LongHeader<'_>, QuicError> {
    let fixed = buf
        .get(start..)
        .and_then(|rest| rest.get(..7))
        .ok_or(QuicError::NotLongHeader)?;
    let first = fixed[0];
    if first & 0x80 == 0 {
        return Err(QuicError::NotLongHeader);
    }
    let version = u32::from_be_bytes([fixed[1], fixed[2], fixed[3], fixed[4]]);
    let dcid_len = usize::from(fixed[5]);
    let dcid_at = start + 6;
    let scid_len_at = dcid_at + dcid_len;
    let dcid = buf
        .get(dcid_at..scid_len_at)
        .ok_or(QuicError::TruncatedConnectionId)?;
    let scid_len = usize::from(
        *buf.get(scid_len_at)
            .ok_or(QuicError::TruncatedConnectionId)?,
    );
    let mut pos = scid_len_at + 1 + scid_len;
    if pos > buf.len() {
        return Err(QuicError::TruncatedConnectionId);
    }
    let Some(known) = Version::from_wire(version) else {
        return Ok(LongHeader {
            start,
            version,
            dcid,
            kind: None,
            pn_offset: pos,
            end: buf.len(),
        });
    };
    if dcid_len > MAX_CID_LEN || scid_len > MAX_CID_LEN {
        return Err(QuicError::ConnectionIdTooLong);
    }
    let kind = known.packet_type(first >> 4);
    if kind == PacketType::Retry {
        return Ok(LongHeader {
            start,
            version,
            dcid,
            kind: Some(kind),
            pn_offset: pos,
            end: buf.len(),
        });
    }
    if kind == PacketType::Initial {
        let (token_len, after) = varint(buf, pos)?;
        pos = usize::try_from(token_len)
            .ok()
            .and_then(|n| after.checked_add(n))
            .ok_or(QuicError::VarintPastEnd)?;
    }
    let (length, after) = varint(buf, pos)?;
    let end = usize::try_from(length)
        .ok()
        .and_then(|n| after.checked_add(n))
        .filter(|&end| end <= buf.len())
        .ok_or(QuicError::PacketPastDatagram)?;
    Ok(LongHeader {
        start,
        version,
        dcid,
        kind: Some(kind),
        pn_offset: after,
        end,
    })
}

/// The CRYPTO frames of the Initial `header` describes (the first packet of
/// `datagram`), followed by those of the Initials of the same connection
/// (version and DCID) coalesced after it.
///
/// The first packet must be an Initial that decrypts and whose frames all
/// parse; otherwise its error is the answer. The coalesced packets are read
/// until one is not such an Initial of the same connection (padding, another
/// connection, a Handshake packet, a packet that does not decrypt): the
/// frames read so far are the answer then.
pub fn initial_frames(
    datagram: &[u8],
    header: &LongHeader<'_>,
) -> Result<Vec<CryptoFrame>, QuicError> {
    let version = match header.kind {
        None => return Err(QuicError::UnknownVersion),
        Some(PacketType::Initial) => {
            Version::from_wire(header.version).ok_or(QuicError::UnknownVersion)?
        }
        Some(_) => return Err(QuicError::NotInitial),
    };
    let keys = InitialKeys::derive(header.dcid, version);
    let mut out = packet_frames(datagram, header, &keys)?;
    let mut current = *header;
    while current.end < datagram.len() {
        let Ok(next) = parse_long_header(datagram, current.end) else {
            break;
        };
        if next.kind != Some(PacketType::Initial)
            || next.version != header.version
            || next.dcid != header.dcid
        {
            break;
        }
        match packet_frames(datagram, &next, &keys) {
            Ok(frames) => out.extend(frames),
            Err(_) => break,
        }
        current = next;
    }
    Ok(out)
}

fn packet_frames(
    datagram: &[u8],
    header: &LongHeader<'_>,
    keys: &InitialKeys,
) -> Result<Vec<CryptoFrame>, QuicError> {
    let plain = crypto::unprotect_initial(datagram, header, keys)?;
    crypto_frames(&plain)
}

/// The server name of the ClientHello in the Initial packets of one
/// datagram (the first packet and the coalesced ones of its connection),
/// the CRYPTO frames taken in any order, as a [`CryptoStream`] of
/// [`DEFAULT_MAX_CRYPTO`] bytes would. `NeedMore`: the name is not complete
/// in this datagram (a hello over several packets needs a `CryptoStream`
/// kept across them).
pub fn initial_sni(datagram: &[u8]) -> Result<ServerName, QuicError> {
    let header = parse_long_header(datagram, 0)?;
    let frames = initial_frames(datagram, &header)?;
    let mut stream = CryptoStream::new(DEFAULT_MAX_CRYPTO, DEFAULT_MAX_PIECES);
    for frame in &frames {
        if !stream.add(frame.offset, &frame.data) {
            return Err(QuicError::CryptoTooLarge);
        }
    }
    Ok(stream.server_name())
}

#[cfg(test)]
mod tests;
