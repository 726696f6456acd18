//! TLS ClientHello detection and SNI location.
//!
//! Both questions are asked of the first bytes of a flow while its segments
//! are still arriving, so both answer on a prefix and say `NeedMore` when
//! the bytes present cannot decide yet. An answer other than `NeedMore`
//! depends only on bytes already present: a longer prefix of the same flow
//! never changes it.
//!
//! Nothing here copies, allocates or panics: every read goes through `get`
//! and every length sum through `checked_add`, because the input is whatever
//! a stranger put on the wire.

const CONTENT_TYPE_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXT_SERVER_NAME: u16 = 0x0000;
const NAME_TYPE_HOST_NAME: u8 = 0x00;

const RECORD_HEADER_LEN: usize = 5;
/// `msg_type` (1) + `length` (3).
const HANDSHAKE_HEADER_LEN: usize = 4;
/// The largest record any TLS version admits (TLS 1.2 `TLSCiphertext`,
/// RFC 5246 §6.2.3). A larger length field means the bytes are not TLS.
const MAX_RECORD_PAYLOAD: usize = (1 << 14) + 2048;
/// RFC 8446 §4.1.2: `legacy_session_id<0..32>`.
const MAX_SESSION_ID_LEN: usize = 32;
/// `legacy_version` (2) + `random` (32).
const VERSION_AND_RANDOM_LEN: usize = 2 + 32;

/// Answer of an incremental check over a contiguous prefix of the flow's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detect {
    /// Not enough bytes yet to decide.
    NeedMore,
    /// The bytes are not the start of a TLS handshake record carrying a ClientHello.
    Mismatch,
    /// A ClientHello record starts here; `record_len` is the full record length including the 5-byte header.
    Match { record_len: usize },
}

/// The seed rule: record type 0x16, record version 0x0301..=0x0304, and the first handshake byte (offset 5) is 0x01.
/// Needs 6 bytes to answer Match; answers Mismatch as early as one byte proves it (e.g. first byte != 0x16).
/// A record length of 0 is a Mismatch. (Record length > 2^14+2048 is a Mismatch too: not a valid TLS record.)
pub fn detect_client_hello(prefix: &[u8]) -> Detect {
    // Each byte is judged as soon as it is present, so a flow that is not
    // TLS is let go after its first byte instead of being held.
    let Some(&content_type) = prefix.first() else {
        return Detect::NeedMore;
    };
    if content_type != CONTENT_TYPE_HANDSHAKE {
        return Detect::Mismatch;
    }
    let Some(&major) = prefix.get(1) else {
        return Detect::NeedMore;
    };
    if major != 0x03 {
        return Detect::Mismatch;
    }
    let Some(&minor) = prefix.get(2) else {
        return Detect::NeedMore;
    };
    if !(0x01..=0x04).contains(&minor) {
        return Detect::Mismatch;
    }
    let Some(&len_hi) = prefix.get(3) else {
        return Detect::NeedMore;
    };
    if usize::from(len_hi) << 8 > MAX_RECORD_PAYLOAD {
        return Detect::Mismatch;
    }
    let Some(&len_lo) = prefix.get(4) else {
        return Detect::NeedMore;
    };
    let payload_len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if payload_len == 0 || payload_len > MAX_RECORD_PAYLOAD {
        return Detect::Mismatch;
    }
    let Some(&handshake_type) = prefix.get(RECORD_HEADER_LEN) else {
        return Detect::NeedMore;
    };
    if handshake_type != HANDSHAKE_CLIENT_HELLO {
        return Detect::Mismatch;
    }
    Detect::Match {
        record_len: RECORD_HEADER_LEN + payload_len,
    }
}

/// Where the host name of the server_name extension lies, in bytes counted from the start of the record (offset 0 = the 0x16 byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sni {
    pub offset: usize,
    pub len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SniScan {
    /// `record` is a prefix that ends before the host name could be located.
    NeedMore,
    /// The ClientHello has no server_name extension (or no host_name entry).
    Absent,
    /// Host name located (fully inside `record`).
    Found(Sni),
    /// Lengths are inconsistent: not a well-formed ClientHello.
    Malformed,
}

/// Walks the record header, handshake header, ClientHello fixed fields, session id, cipher suites, compression methods and the extension list to the server_name extension (type 0) and its first host_name (type 0) entry. `record` may be a prefix of the record (partial data): answer NeedMore when the answer needs bytes not yet present. Bounds: everything must stay inside the record length and the handshake length.
///
/// Bytes after the record in `record` are ignored. Bytes that are not a
/// ClientHello record at all (see [`detect_client_hello`]) answer
/// `Malformed`, and so does a ClientHello longer than its record
/// (fragmented over several records): the split works on the first record
/// only.
pub fn find_sni(record: &[u8]) -> SniScan {
    match scan_client_hello(record) {
        Ok(answer) | Err(answer) => answer,
    }
}

/// `Err` carries an early answer (`NeedMore` or `Malformed`) up through `?`.
type Step<T> = Result<T, SniScan>;

/// [`find_sni`] for a ClientHello handshake message that comes without a
/// TLS record around it (QUIC carries the message itself in CRYPTO frames):
/// `handshake` starts with the handshake type byte, and the offset of a
/// `Found` name counts from there. The same rules apply as inside a record,
/// including the record's size limit: a message longer than one TLS record
/// could hold is `Malformed`.
pub fn find_handshake_sni(handshake: &[u8]) -> SniScan {
    match scan_handshake(handshake) {
        Ok(answer) | Err(answer) => answer,
    }
}

fn scan_handshake(data: &[u8]) -> Step<SniScan> {
    if data.first().is_some_and(|&t| t != HANDSHAKE_CLIENT_HELLO) {
        return Err(SniScan::Malformed);
    }
    let Some(&[_, hi, mid, lo]) = data.get(..HANDSHAKE_HEADER_LEN) else {
        return Err(SniScan::NeedMore);
    };
    let body_len = (usize::from(hi) << 16) | (usize::from(mid) << 8) | usize::from(lo);
    let message_len = HANDSHAKE_HEADER_LEN + body_len;
    if message_len > MAX_RECORD_PAYLOAD {
        return Err(SniScan::Malformed);
    }
    scan_hello(Reader {
        data,
        pos: 1, // past the handshake type checked above
        end: message_len,
    })
}

fn scan_client_hello(data: &[u8]) -> Step<SniScan> {
    let record_len = match detect_client_hello(data) {
        Detect::Match { record_len } => record_len,
        Detect::NeedMore => return Err(SniScan::NeedMore),
        Detect::Mismatch => return Err(SniScan::Malformed),
    };
    scan_hello(Reader {
        data,
        pos: RECORD_HEADER_LEN + 1, // past the handshake type checked by detect
        end: record_len,
    })
}

/// The ClientHello from its 24-bit length on; `hello.end` is the end of what
/// holds it (the record, or the handshake message itself).
fn scan_hello(mut hello: Reader<'_>) -> Step<SniScan> {
    let body_len = hello.u24()?;
    hello.end = hello.bound(body_len)?;

    hello.skip(VERSION_AND_RANDOM_LEN)?;
    let session_id_len = usize::from(hello.u8()?);
    if session_id_len > MAX_SESSION_ID_LEN {
        return Err(SniScan::Malformed);
    }
    hello.skip(session_id_len)?;
    // cipher_suites<2..2^16-2>: whole 2-byte suites, at least one.
    let cipher_suites_len = usize::from(hello.u16()?);
    if cipher_suites_len == 0 || cipher_suites_len % 2 != 0 {
        return Err(SniScan::Malformed);
    }
    hello.skip(cipher_suites_len)?;
    // legacy_compression_methods<1..2^8-1>
    let compression_len = usize::from(hello.u8()?);
    if compression_len == 0 {
        return Err(SniScan::Malformed);
    }
    hello.skip(compression_len)?;

    if hello.pos == hello.end {
        // A hello without an extension block (SSL 3.0 style) is legal.
        return Ok(SniScan::Absent);
    }
    // The extension block is the last field: it must close the hello exactly.
    let extensions_len = usize::from(hello.u16()?);
    if hello.pos.checked_add(extensions_len) != Some(hello.end) {
        return Err(SniScan::Malformed);
    }
    while hello.pos < hello.end {
        let ext_type = hello.u16()?;
        let ext_len = usize::from(hello.u16()?);
        if ext_type == EXT_SERVER_NAME {
            return scan_server_name(hello.sub(ext_len)?);
        }
        hello.skip(ext_len)?;
    }
    Ok(SniScan::Absent)
}

/// RFC 6066 §3: `ServerName server_name_list<1..2^16-1>`, each entry a
/// `name_type` byte and `opaque HostName<1..2^16-1>`.
fn scan_server_name(mut ext: Reader<'_>) -> Step<SniScan> {
    let list_len = usize::from(ext.u16()?);
    if list_len == 0 || ext.pos.checked_add(list_len) != Some(ext.end) {
        return Err(SniScan::Malformed);
    }
    let mut host = None;
    while ext.pos < ext.end {
        let name_type = ext.u8()?;
        let name_len = usize::from(ext.u16()?);
        if name_type == NAME_TYPE_HOST_NAME && host.is_none() {
            if name_len == 0 {
                return Err(SniScan::Malformed);
            }
            let offset = ext.pos;
            ext.take(name_len)?; // the whole name must be present, not just declared
            host = Some(Sni {
                offset,
                len: name_len,
            });
        } else {
            ext.skip(name_len)?;
        }
    }
    // The rest of the list is walked (by lengths only) so that a name whose
    // length is off by some bytes does not pass for a shorter name.
    Ok(host.map_or(SniScan::Absent, SniScan::Found))
}

/// A cursor over a prefix of the record with a declared end.
///
/// A field that would cross `end` is `Malformed`: the lengths disagree. A
/// field inside `end` but past the bytes present is `NeedMore`. `skip`
/// checks only the first, so fields nobody reads are never waited for.
#[derive(Debug, Clone, Copy)]
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    /// The position `len` bytes ahead, if it stays inside `end`.
    fn bound(&self, len: usize) -> Step<usize> {
        self.pos
            .checked_add(len)
            .filter(|&stop| stop <= self.end)
            .ok_or(SniScan::Malformed)
    }

    fn skip(&mut self, len: usize) -> Step<()> {
        self.pos = self.bound(len)?;
        Ok(())
    }

    fn take(&mut self, len: usize) -> Step<&'a [u8]> {
        let stop = self.bound(len)?;
        let bytes = self.data.get(self.pos..stop).ok_or(SniScan::NeedMore)?;
        self.pos = stop;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Step<[u8; N]> {
        let bytes = self.take(N)?;
        <[u8; N]>::try_from(bytes).map_err(|_| SniScan::Malformed)
    }

    fn u8(&mut self) -> Step<u8> {
        let [b] = self.array()?;
        Ok(b)
    }

    fn u16(&mut self) -> Step<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u24(&mut self) -> Step<usize> {
        let [hi, mid, lo] = self.array()?;
        Ok((usize::from(hi) << 16) | (usize::from(mid) << 8) | usize::from(lo))
    }

    /// A reader over the next `len` bytes (an extension body).
    fn sub(&self, len: usize) -> Step<Reader<'a>> {
        Ok(Reader {
            data: self.data,
            pos: self.pos,
            end: self.bound(len)?,
        })
    }
}

#[cfg(test)]
mod tests;
