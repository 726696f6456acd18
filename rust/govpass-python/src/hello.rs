//! `client_hello_sni`: the core's SNI parser for a ClientHello that arrives
//! without a TLS record around it (QUIC carries the handshake message itself
//! in CRYPTO frames).

use govpass_core::tls::{find_sni, SniScan};
use pyo3::prelude::*;

/// The largest record payload `find_sni` accepts (2^14 + 2048, as in the core).
const MAX_RECORD_PAYLOAD: usize = (1 << 14) + 2048;
const HANDSHAKE_HEADER_LEN: usize = 4;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;

/// Server name of the ClientHello handshake message `handshake` starts with
/// (a prefix is enough once it holds the name). Returns `(status, host)`:
/// `("found", name)`, `("absent", None)` (no server_name), `("needmore",
/// None)` (the prefix ends before the name could be located) or
/// `("malformed", None)` (not a ClientHello, lengths disagree, or a message
/// longer than one TLS record can hold). A name that is not UTF-8 comes back
/// with U+FFFD in place of the bad bytes.
#[pyfunction]
pub fn client_hello_sni(handshake: &[u8]) -> (&'static str, Option<String>) {
    match scan(handshake) {
        Ok(host) => ("found", Some(host)),
        Err(SniScan::Absent) => ("absent", None),
        Err(SniScan::NeedMore) => ("needmore", None),
        Err(_) => ("malformed", None),
    }
}

fn scan(handshake: &[u8]) -> Result<String, SniScan> {
    if handshake
        .first()
        .is_some_and(|&t| t != HANDSHAKE_CLIENT_HELLO)
    {
        return Err(SniScan::Malformed);
    }
    let Some(&[_, hi, mid, lo]) = handshake.get(..HANDSHAKE_HEADER_LEN) else {
        return Err(SniScan::NeedMore);
    };
    let body_len = (usize::from(hi) << 16) | (usize::from(mid) << 8) | usize::from(lo);
    let message_len = HANDSHAKE_HEADER_LEN + body_len;
    let record_len = u16::try_from(message_len)
        .ok()
        .filter(|&n| usize::from(n) <= MAX_RECORD_PAYLOAD)
        .ok_or(SniScan::Malformed)?;
    // A record header in front turns the message into what `find_sni` reads:
    // a (prefix of a) TLS handshake record holding exactly this message.
    let present = &handshake[..handshake.len().min(message_len)];
    let mut record = Vec::with_capacity(5 + present.len());
    record.extend_from_slice(&[0x16, 0x03, 0x01]);
    record.extend_from_slice(&record_len.to_be_bytes());
    record.extend_from_slice(present);
    match find_sni(&record) {
        SniScan::Found(sni) => {
            let name = &record[sni.offset..sni.offset + sni.len];
            Ok(String::from_utf8_lossy(name).into_owned())
        }
        other => Err(other),
    }
}
