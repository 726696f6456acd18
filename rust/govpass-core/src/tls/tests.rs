//! Tests of ClientHello detection and SNI location over byte fixtures,
//! every prefix of real hellos, corrupted lengths, and arbitrary bytes.
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
            bytes: include_bytes!(concat!("../../../../tests/fixtures/hellos/", $name, ".bin")),
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

const MANIFEST: &str = include_str!("../../../../tests/fixtures/hellos/manifest.json");

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
