//! The CRYPTO stream of one connection, reassembled from frames that come
//! in any order, repeated or overlapping, and the server name in it.

use std::collections::BTreeMap;

use crate::tls::{find_handshake_sni, SniScan};

/// The pieces a [`CryptoStream`] keeps by default.
pub const DEFAULT_MAX_PIECES: usize = 64;

/// The server name of the ClientHello at the start of a CRYPTO stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerName {
    /// The host name bytes, as sent.
    Found(Vec<u8>),
    /// The ClientHello has no server_name extension (or no host_name entry).
    Absent,
    /// The contiguous data from offset 0 ends before the name is complete.
    NeedMore,
    /// Not a ClientHello, or its lengths disagree.
    Malformed,
}

/// The CRYPTO data of one connection, keyed by offset. Bounded: data past
/// `limit`, more than `max_pieces` pieces or more than 2 x `limit` bytes
/// stored make [`CryptoStream::add`] answer `false`, and the caller gives up
/// on the connection.
#[derive(Debug, Clone)]
pub struct CryptoStream {
    limit: usize,
    max_pieces: usize,
    stored: usize,
    pieces: BTreeMap<u64, Vec<u8>>,
}

impl CryptoStream {
    pub fn new(limit: usize, max_pieces: usize) -> CryptoStream {
        CryptoStream {
            limit,
            max_pieces,
            stored: 0,
            pieces: BTreeMap::new(),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn max_pieces(&self) -> usize {
        self.max_pieces
    }

    /// Bytes held (a longer retransmission at the same offset replaces the
    /// shorter piece; overlaps at other offsets count twice).
    pub fn stored(&self) -> usize {
        self.stored
    }

    /// Adds `data` at `offset`; `false` when a bound is crossed (nothing is
    /// added then). Empty data is ignored.
    pub fn add(&mut self, offset: u64, data: &[u8]) -> bool {
        if data.is_empty() {
            return true;
        }
        let within_limit = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(data.len()))
            .is_some_and(|stop| stop <= self.limit);
        let within_store = self
            .stored
            .checked_add(data.len())
            .is_some_and(|total| total <= self.limit.saturating_mul(2));
        if !within_limit || !within_store {
            return false;
        }
        let old_len = match self.pieces.get(&offset) {
            None if self.pieces.len() >= self.max_pieces => return false,
            None => 0,
            Some(old) if old.len() >= data.len() => return true, // a retransmission
            Some(old) => old.len(),
        };
        self.pieces.insert(offset, data.to_vec());
        self.stored = self.stored + data.len() - old_len;
        true
    }

    /// The contiguous data from offset 0 (where pieces overlap, the first
    /// wins).
    pub fn prefix(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (&offset, data) in &self.pieces {
            let Ok(offset) = usize::try_from(offset) else {
                break;
            };
            if offset > out.len() {
                break;
            }
            if let Some(new) = data.get(out.len() - offset..) {
                out.extend_from_slice(new);
            }
        }
        out
    }

    /// The server name of the ClientHello the contiguous data starts with.
    pub fn server_name(&self) -> ServerName {
        handshake_server_name(&self.prefix())
    }
}

/// The server name of the ClientHello handshake message (no TLS record
/// header) that `handshake` starts with: [`find_handshake_sni`], the name
/// copied out.
pub fn handshake_server_name(handshake: &[u8]) -> ServerName {
    match find_handshake_sni(handshake) {
        SniScan::Found(sni) => handshake
            .get(sni.offset..sni.offset + sni.len)
            .map_or(ServerName::Malformed, |name| {
                ServerName::Found(name.to_vec())
            }),
        SniScan::Absent => ServerName::Absent,
        SniScan::NeedMore => ServerName::NeedMore,
        SniScan::Malformed => ServerName::Malformed,
    }
}
