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

fn scan_client_hello(data: &[u8]) -> Step<SniScan> {
    let record_len = match detect_client_hello(data) {
        Detect::Match { record_len } => record_len,
        Detect::NeedMore => return Err(SniScan::NeedMore),
        Detect::Mismatch => return Err(SniScan::Malformed),
    };
    let mut hello = Reader {
        data,
        pos: RECORD_HEADER_LEN + 1, // past the handshake type checked by detect
        end: record_len,
    };
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
mod tests {
    use super::*;
    use proptest::prelude::*;

    // ---------------------------------------------------------------- detect

    #[test]
    fn detect_boundaries() {
        use Detect::{Match, Mismatch, NeedMore};
        #[rustfmt::skip]
        let cases: &[(&[u8], Detect, &str)] = &[
            (&[], NeedMore, "empty"),
            (&[0x16], NeedMore, "type only"),
            (&[0x17], Mismatch, "application data"),
            (&[0x00], Mismatch, "zero byte"),
            (b"G", Mismatch, "plain HTTP"),
            (&[0x16, 0x03], NeedMore, "major only"),
            (&[0x16, 0x02], Mismatch, "SSL 2 major"),
            (&[0x16, 0x03, 0x00], Mismatch, "version 0x0300 (SSL 3.0)"),
            (&[0x16, 0x03, 0x01], NeedMore, "version 0x0301"),
            (&[0x16, 0x03, 0x04], NeedMore, "version 0x0304"),
            (&[0x16, 0x03, 0x05], Mismatch, "version 0x0305"),
            (&[0x16, 0x03, 0x01, 0x00], NeedMore, "length high byte 0"),
            (&[0x16, 0x03, 0x01, 0x48], NeedMore, "length high byte 0x48: 18432 still possible"),
            (&[0x16, 0x03, 0x01, 0x49], Mismatch, "length high byte 0x49: > 2^14+2048"),
            (&[0x16, 0x03, 0x01, 0xff], Mismatch, "length high byte 0xff"),
            (&[0x16, 0x03, 0x01, 0x00, 0x00], Mismatch, "zero length"),
            (&[0x16, 0x03, 0x01, 0x00, 0x01], NeedMore, "length 1"),
            (&[0x16, 0x03, 0x01, 0x48, 0x00], NeedMore, "length 18432 = 2^14+2048"),
            (&[0x16, 0x03, 0x01, 0x48, 0x01], Mismatch, "length 18433"),
            (&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01], Match { record_len: 517 }, "0x0301"),
            (&[0x16, 0x03, 0x04, 0x02, 0x00, 0x01], Match { record_len: 517 }, "0x0304"),
            (&[0x16, 0x03, 0x02, 0x00, 0x01, 0x01], Match { record_len: 6 }, "length 1"),
            (&[0x16, 0x03, 0x03, 0x48, 0x00, 0x01], Match { record_len: 18437 }, "largest length"),
            (&[0x16, 0x03, 0x01, 0x02, 0x00, 0x02], Mismatch, "ServerHello"),
            (&[0x16, 0x03, 0x01, 0x02, 0x00, 0x00], Mismatch, "HelloRequest"),
            (&[0x16, 0x03, 0x05, 0x02, 0x00, 0x01], Mismatch, "0x0305 with 6 bytes"),
            (&[0x16, 0x03, 0x01, 0x00, 0x00, 0x01], Mismatch, "zero length with 6 bytes"),
            (&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0xff, 0xff], Match { record_len: 517 }, "later bytes ignored"),
        ];
        for &(bytes, want, what) in cases {
            assert_eq!(detect_client_hello(bytes), want, "{what}: {bytes:02x?}");
        }
    }

    // -------------------------------------------------------------- fixtures

    struct Fixture {
        name: &'static str,
        bytes: &'static [u8],
        host: Option<&'static str>,
    }

    macro_rules! fixture {
        ($name:literal, $host:expr) => {
            Fixture {
                name: $name,
                bytes: include_bytes!(concat!("../../../tests/fixtures/hellos/", $name, ".bin")),
                host: $host,
            }
        };
    }

    const LONG_SNI: &str = concat!(
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.",
        "long-label-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb.",
        "ccccccccccccccccccccccccccccccccccccccccccccccccccccccc-end.",
        "blocked.example",
    );

    const FIXTURES: &[Fixture] = &[
        fixture!("openssl_default", Some("blocked.example")),
        fixture!("openssl_tls12", Some("blocked.example")),
        fixture!("openssl_tls13", Some("blocked.example")),
        fixture!("openssl_alpn", Some("blocked.example")),
        fixture!("openssl_long_sni", Some(LONG_SNI)),
        fixture!("openssl_co_uk", Some("www.sub.example.co.uk")),
        fixture!("openssl_no_sni", None),
        fixture!("openssl_single_label", Some("intranet")),
        fixture!("chromium_sni_early", Some("blocked.example")),
        fixture!("chromium_sni_late", Some("blocked.example")),
    ];

    const MANIFEST: &str = include_str!("../../../tests/fixtures/hellos/manifest.json");

    /// The text after `"key": ` on a manifest line (one entry per line).
    fn manifest_field<'a>(line: &'a str, key: &str) -> &'a str {
        let tag = format!("\"{key}\": ");
        let start = line.find(&tag).map(|i| i + tag.len()).expect(key);
        let rest = &line[start..];
        if let Some(quoted) = rest.strip_prefix('"') {
            &quoted[..quoted.find('"').expect("closing quote")]
        } else {
            &rest[..rest.find([',', '}']).expect("end of value")]
        }
    }

    #[test]
    fn fixtures_match_manifest() {
        let lines: Vec<&str> = MANIFEST
            .lines()
            .filter(|l| l.contains("\"file\": "))
            .collect();
        assert_eq!(
            lines.len(),
            FIXTURES.len(),
            "every manifest entry has a fixture here"
        );
        for fx in FIXTURES {
            let file = format!("{}.bin", fx.name);
            let line = lines
                .iter()
                .find(|l| manifest_field(l, "file") == file)
                .unwrap_or_else(|| panic!("{file} not in manifest"));
            let host = manifest_field(line, "sni");
            assert_eq!(fx.host.unwrap_or("null"), host, "{file}");
            let record_len: usize = manifest_field(line, "record_len").parse().unwrap();
            assert_eq!(fx.bytes.len(), record_len, "{file}");
            let offset = manifest_field(line, "sni_offset");
            match find_sni(fx.bytes) {
                SniScan::Found(sni) => assert_eq!(offset, sni.offset.to_string(), "{file}"),
                SniScan::Absent => assert_eq!(offset, "null", "{file}"),
                other => panic!("{file}: {other:?}"),
            }
        }
    }

    #[test]
    fn fixtures_detect_as_client_hello() {
        for fx in FIXTURES {
            let want = Detect::Match {
                record_len: fx.bytes.len(),
            };
            for n in 0..=fx.bytes.len() {
                let got = detect_client_hello(&fx.bytes[..n]);
                let expect = if n < 6 { Detect::NeedMore } else { want };
                assert_eq!(got, expect, "{} prefix {n}", fx.name);
            }
        }
    }

    #[test]
    fn fixtures_find_host_name() {
        for fx in FIXTURES {
            match (find_sni(fx.bytes), fx.host) {
                (SniScan::Found(sni), Some(host)) => {
                    let name = &fx.bytes[sni.offset..sni.offset + sni.len];
                    assert_eq!(name, host.as_bytes(), "{}", fx.name);
                }
                (SniScan::Absent, None) => {}
                (other, host) => panic!("{}: {other:?}, manifest says {host:?}", fx.name),
            }
        }
    }

    #[test]
    fn every_prefix_needs_more_until_the_answer_is_complete() {
        for fx in FIXTURES {
            let full = find_sni(fx.bytes);
            let decided_at = (0..=fx.bytes.len())
                .find(|&n| find_sni(&fx.bytes[..n]) != SniScan::NeedMore)
                .expect("the full record decides");
            for n in 0..=fx.bytes.len() {
                let want = if n < decided_at {
                    SniScan::NeedMore
                } else {
                    full
                };
                assert_eq!(find_sni(&fx.bytes[..n]), want, "{} prefix {n}", fx.name);
            }
            if let SniScan::Found(sni) = full {
                assert_eq!(
                    decided_at,
                    sni.offset + sni.len,
                    "{}: exactly when the name ends",
                    fx.name
                );
            }
        }
    }

    #[test]
    fn bytes_after_the_record_are_ignored() {
        for fx in FIXTURES {
            let mut two = fx.bytes.to_vec();
            two.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5]);
            assert_eq!(find_sni(&two), find_sni(fx.bytes), "{}", fx.name);
        }
    }

    #[test]
    fn long_chromium_hello_puts_the_name_past_the_first_segment() {
        // The case reassembly exists for: the name is not in a 1460-byte segment.
        let fx = FIXTURES
            .iter()
            .find(|f| f.name == "chromium_sni_late")
            .unwrap();
        let SniScan::Found(sni) = find_sni(fx.bytes) else {
            panic!("{:?}", find_sni(fx.bytes))
        };
        assert!(sni.offset > 1460, "{sni:?}");
        assert_eq!(find_sni(&fx.bytes[..1460]), SniScan::NeedMore);
    }

    // ------------------------------------------------------------ corruption

    fn with_u16(bytes: &[u8], at: usize, f: impl Fn(u16) -> u16) -> Vec<u8> {
        let mut out = bytes.to_vec();
        let old = u16::from_be_bytes([out[at], out[at + 1]]);
        out[at..at + 2].copy_from_slice(&f(old).to_be_bytes());
        out
    }

    fn with_u24(bytes: &[u8], at: usize, f: impl Fn(u32) -> u32) -> Vec<u8> {
        let mut out = bytes.to_vec();
        let old = u32::from_be_bytes([0, out[at], out[at + 1], out[at + 2]]);
        out[at..at + 3].copy_from_slice(&f(old).to_be_bytes()[1..]);
        out
    }

    /// Offset of the extension block length field, found the slow way.
    fn extensions_len_at(bytes: &[u8]) -> usize {
        let sid = 9 + 34;
        let cs = sid + 1 + usize::from(bytes[sid]);
        let comp = cs + 2 + usize::from(u16::from_be_bytes([bytes[cs], bytes[cs + 1]]));
        comp + 1 + usize::from(bytes[comp])
    }

    #[test]
    fn lengths_off_by_one_are_malformed() {
        let inc = |v: u16| v.wrapping_add(1);
        let dec = |v: u16| v.wrapping_sub(1);
        for fx in FIXTURES {
            let b = fx.bytes;
            let ext_at = extensions_len_at(b);
            let mut broken: Vec<(Vec<u8>, &str)> = vec![
                (
                    with_u16(b, 3, dec),
                    "record length - 1: handshake does not fit",
                ),
                (with_u24(b, 6, |v| v + 1), "handshake length + 1"),
                (with_u24(b, 6, |v| v - 1), "handshake length - 1"),
                (with_u24(b, 6, |_| 0), "handshake length 0"),
                (with_u16(b, ext_at, inc), "extension block + 1"),
                (with_u16(b, ext_at, dec), "extension block - 1"),
                (
                    with_u16(b, 9 + 35 + usize::from(b[43]), |_| 0),
                    "no cipher suites",
                ),
                (
                    with_u16(b, 9 + 35 + usize::from(b[43]), |_| 3),
                    "odd cipher suites",
                ),
            ];
            let mut sid = b.to_vec();
            sid[43] = 33;
            broken.push((sid, "session id 33"));
            if let SniScan::Found(sni) = find_sni(b) {
                let o = sni.offset;
                broken.extend([
                    (with_u16(b, o - 7, inc), "server_name ext + 1"),
                    (with_u16(b, o - 7, dec), "server_name ext - 1"),
                    (with_u16(b, o - 7, |_| 0), "server_name ext empty"),
                    (with_u16(b, o - 5, inc), "name list + 1"),
                    (with_u16(b, o - 5, dec), "name list - 1"),
                    (with_u16(b, o - 2, inc), "host name + 1"),
                    (with_u16(b, o - 2, dec), "host name - 1"),
                    (with_u16(b, o - 2, |_| 0), "host name empty"),
                ]);
            }
            for (bytes, what) in &broken {
                assert_eq!(find_sni(bytes), SniScan::Malformed, "{}: {what}", fx.name);
            }
        }
    }

    #[test]
    fn record_longer_than_the_hello_is_fine() {
        // A record may carry more than the ClientHello; only the hello is walked.
        for fx in FIXTURES {
            let longer = with_u16(fx.bytes, 3, |v| v + 1);
            assert_eq!(find_sni(&longer), find_sni(fx.bytes), "{}", fx.name);
        }
    }

    #[test]
    fn other_name_types_and_extensions_are_skipped() {
        for fx in FIXTURES {
            let SniScan::Found(sni) = find_sni(fx.bytes) else {
                continue;
            };
            let mut other_type = fx.bytes.to_vec();
            other_type[sni.offset - 3] = 0x01;
            assert_eq!(find_sni(&other_type), SniScan::Absent, "{}", fx.name);
            let other_ext = with_u16(fx.bytes, sni.offset - 9, |_| 0xfe00);
            assert_eq!(find_sni(&other_ext), SniScan::Absent, "{}", fx.name);
        }
    }

    #[test]
    fn not_a_client_hello_is_malformed() {
        let b = FIXTURES[0].bytes;
        for (at, value) in [(0, 0x17), (2, 0x00), (2, 0x05), (5, 0x02)] {
            let mut bytes = b.to_vec();
            bytes[at] = value;
            assert_eq!(
                find_sni(&bytes),
                SniScan::Malformed,
                "byte {at} = {value:#x}"
            );
        }
        assert_eq!(find_sni(&[]), SniScan::NeedMore);
        assert_eq!(
            find_sni(&[0x16, 0x03, 0x01, 0x00, 0x03, 0x01, 0x00]),
            SniScan::Malformed
        );
    }

    #[test]
    fn hello_without_extension_block_has_no_name() {
        let hello = build_hello(&[], &[0x002f], &[0], None);
        assert_eq!(find_sni(&hello), SniScan::Absent);
        assert_eq!(
            find_sni(&build_hello(&[], &[0x002f], &[0], Some(&[]))),
            SniScan::Absent
        );
    }

    #[test]
    fn every_single_byte_change_is_survived() {
        for fx in FIXTURES {
            let mut bytes = fx.bytes.to_vec();
            for at in 0..bytes.len() {
                let old = bytes[at];
                for new in [0x00, 0xff, old ^ 0x01, old.wrapping_add(1), old ^ 0x80] {
                    bytes[at] = new;
                    for input in [&bytes[..], &bytes[..=at]] {
                        check_in_bounds(input, find_sni(input));
                    }
                }
                bytes[at] = old;
            }
        }
    }

    fn check_in_bounds(input: &[u8], answer: SniScan) {
        if let SniScan::Found(sni) = answer {
            assert!(sni.len > 0);
            assert!(sni
                .offset
                .checked_add(sni.len)
                .is_some_and(|end| end <= input.len()));
        }
    }

    // -------------------------------------------------------------- builders

    /// A ClientHello record; `extensions: None` leaves out the extension block.
    fn build_hello(
        session_id: &[u8],
        ciphers: &[u16],
        compression: &[u8],
        extensions: Option<&[(u16, Vec<u8>)]>,
    ) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0x5a; 32]);
        body.push(session_id.len() as u8);
        body.extend_from_slice(session_id);
        body.extend_from_slice(&((ciphers.len() * 2) as u16).to_be_bytes());
        for c in ciphers {
            body.extend_from_slice(&c.to_be_bytes());
        }
        body.push(compression.len() as u8);
        body.extend_from_slice(compression);
        if let Some(exts) = extensions {
            let mut block = Vec::new();
            for (t, data) in exts {
                block.extend_from_slice(&t.to_be_bytes());
                block.extend_from_slice(&(data.len() as u16).to_be_bytes());
                block.extend_from_slice(data);
            }
            body.extend_from_slice(&(block.len() as u16).to_be_bytes());
            body.extend_from_slice(&block);
        }
        let mut handshake = vec![HANDSHAKE_CLIENT_HELLO];
        handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend_from_slice(&body);
        let mut record = vec![CONTENT_TYPE_HANDSHAKE, 0x03, 0x01];
        record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
        record.extend_from_slice(&handshake);
        record
    }

    /// A server_name extension body from (name_type, name) entries.
    fn server_name_body(entries: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut list = Vec::new();
        for (t, name) in entries {
            list.push(*t);
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name);
        }
        let mut body = (list.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(&list);
        body
    }

    #[test]
    fn host_name_after_other_name_types() {
        let sn = server_name_body(&[(7, b"xx".to_vec()), (0, b"a.example".to_vec())]);
        let hello = build_hello(
            &[1; 32],
            &[0x1301],
            &[0],
            Some(&[(0x0017, vec![]), (0, sn)]),
        );
        let SniScan::Found(sni) = find_sni(&hello) else {
            panic!("{:?}", find_sni(&hello))
        };
        assert_eq!(&hello[sni.offset..sni.offset + sni.len], b"a.example");
    }

    #[test]
    fn field_limits_of_the_fixed_part() {
        let exts = [(0, server_name_body(&[(0, b"a.example".to_vec())]))];
        let sn = || Some(&exts[..]);
        assert!(matches!(
            find_sni(&build_hello(&[7; 32], &[1], &[0], sn())),
            SniScan::Found(_)
        ));
        assert_eq!(
            find_sni(&build_hello(&[7; 33], &[1], &[0], sn())),
            SniScan::Malformed
        );
        assert_eq!(
            find_sni(&build_hello(&[], &[], &[0], sn())),
            SniScan::Malformed
        );
        assert_eq!(
            find_sni(&build_hello(&[], &[1], &[], sn())),
            SniScan::Malformed
        );
    }

    #[test]
    fn first_host_name_wins_and_the_list_is_checked_to_its_end() {
        let sn = server_name_body(&[(0, b"first".to_vec()), (0, b"second".to_vec())]);
        let hello = build_hello(&[], &[0x1301], &[0], Some(&[(0, sn.clone())]));
        let SniScan::Found(sni) = find_sni(&hello) else {
            panic!()
        };
        assert_eq!(&hello[sni.offset..sni.offset + sni.len], b"first");
        // The second entry is walked, so its length must fit too.
        let mut bad = sn;
        let last = bad.len() - 7;
        bad[last] = 0x00;
        bad[last + 1] = 0x07;
        let hello = build_hello(&[], &[0x1301], &[0], Some(&[(0, bad)]));
        assert_eq!(find_sni(&hello), SniScan::Malformed);
    }

    // ------------------------------------------------------------ properties

    /// A generated hello and where its host name must be found.
    fn arb_hello() -> impl Strategy<Value = (Vec<u8>, Option<Vec<u8>>)> {
        let other_ext = (1u16..=0xffff, prop::collection::vec(any::<u8>(), 0..40));
        (
            prop::collection::vec(any::<u8>(), 0..=32),
            prop::collection::vec(any::<u16>(), 1..40),
            prop::collection::vec(any::<u8>(), 1..4),
            prop::collection::vec(other_ext, 0..12),
            prop::option::of((
                prop::collection::vec(any::<u8>(), 1..300),
                prop::collection::vec((1u8..=255, prop::collection::vec(any::<u8>(), 0..20)), 0..3),
                any::<prop::sample::Index>(),
            )),
        )
            .prop_map(|(sid, ciphers, comp, mut exts, sni)| {
                let host = sni.map(|(host, mut names, at)| {
                    names.push((0, host.clone()));
                    exts.insert(at.index(exts.len() + 1), (0, server_name_body(&names)));
                    host
                });
                (build_hello(&sid, &ciphers, &comp, Some(&exts)), host)
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2100)) {
            let _ = detect_client_hello(&bytes);
            check_in_bounds(&bytes, find_sni(&bytes));
        }

        #[test]
        fn arbitrary_body_behind_a_valid_header(
            body in prop::collection::vec(any::<u8>(), 0..600),
            extra in 0usize..8,
        ) {
            // Consistent outer headers let random bytes reach the inner walk.
            let mut bytes = vec![0x16, 0x03, 0x01];
            bytes.extend_from_slice(&((body.len() + 4 + extra) as u16).to_be_bytes());
            bytes.push(0x01);
            bytes.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            bytes.extend_from_slice(&body);
            check_in_bounds(&bytes, find_sni(&bytes));
        }

        #[test]
        fn generated_hellos_are_read_back((hello, host) in arb_hello()) {
            let answer = find_sni(&hello);
            match (&host, answer) {
                (Some(host), SniScan::Found(sni)) => {
                    prop_assert_eq!(&hello[sni.offset..sni.offset + sni.len], &host[..]);
                    prop_assert_eq!(find_sni(&hello[..sni.offset + sni.len - 1]), SniScan::NeedMore);
                    prop_assert_eq!(find_sni(&hello[..sni.offset + sni.len]), answer);
                }
                (None, SniScan::Absent) => {}
                (host, answer) => prop_assert!(false, "{answer:?} for {host:?}"),
            }
        }

        #[test]
        fn a_decided_prefix_never_changes_its_mind(
            which in 0..FIXTURES.len(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = FIXTURES[which].bytes.to_vec();
            for (at, value) in edits {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            let full = find_sni(&bytes);
            check_in_bounds(&bytes, full);
            let prefix = &bytes[..cut.index(bytes.len() + 1)];
            let early = find_sni(prefix);
            check_in_bounds(prefix, early);
            if early != SniScan::NeedMore {
                prop_assert_eq!(early, full);
            }
        }
    }
}
