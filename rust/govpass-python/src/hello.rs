//! `client_hello_sni`: the core's SNI parser for a ClientHello that arrives
//! without a TLS record around it (QUIC carries the handshake message itself
//! in CRYPTO frames).

use govpass_core::quic::{handshake_server_name, ServerName};
use pyo3::prelude::*;

/// Server name of the ClientHello handshake message `handshake` starts with
/// (a prefix is enough once it holds the name). Returns `(status, host)`:
/// `("found", name)`, `("absent", None)` (no server_name), `("needmore",
/// None)` (the prefix ends before the name could be located) or
/// `("malformed", None)` (not a ClientHello, lengths disagree, or a message
/// longer than one TLS record can hold). A name that is not UTF-8 comes back
/// with U+FFFD in place of the bad bytes.
#[pyfunction]
pub fn client_hello_sni(handshake: &[u8]) -> (&'static str, Option<String>) {
    server_name_tuple(handshake_server_name(handshake))
}

/// `(status, host)` of a server name answer, as `client_hello_sni` gives it.
pub fn server_name_tuple(answer: ServerName) -> (&'static str, Option<String>) {
    match answer {
        ServerName::Found(name) => ("found", Some(String::from_utf8_lossy(&name).into_owned())),
        ServerName::Absent => ("absent", None),
        ServerName::NeedMore => ("needmore", None),
        ServerName::Malformed => ("malformed", None),
    }
}
