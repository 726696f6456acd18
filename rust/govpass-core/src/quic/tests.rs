//! The RFC 9001 / RFC 9369 Appendix A client Initials, packets sealed here
//! (by a helper checked against the RFC bytes), and hostile inputs.

use super::*;
use aes_gcm::aead::{AeadInOut, KeyInit, Nonce};
use aes_gcm::Aes128Gcm;
use proptest::prelude::*;

const RFC_V1_HEX: &str =
    include_str!("../../../../tests/fixtures/quic/rfc9001_a2_client_initial.hex");
const RFC_V2_HEX: &str =
    include_str!("../../../../tests/fixtures/quic/rfc9369_a2_client_initial.hex");
const HELLO_LATE: &[u8] = include_bytes!("../../../../tests/fixtures/hellos/chromium_sni_late.bin");
const HELLO_NO_SNI: &[u8] = include_bytes!("../../../../tests/fixtures/hellos/openssl_no_sni.bin");
const RFC_DCID: [u8; 8] = [0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];
/// RFC 9001 A.2 (and RFC 9369 A.2): the unprotected payload before its PADDING.
const RFC_CRYPTO_FRAME: &str = concat!(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868",
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578",
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005",
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba",
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400",
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100",
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000",
    "75300901100f088394c8f03e51570806048000ffff",
);
const BLOCKED: &[u8] = b"blocked.example";

fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .flat_map(|line| line.bytes())
        .filter(|b| b.is_ascii_hexdigit())
        .collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn padded(mut frames: Vec<u8>, size: usize) -> Vec<u8> {
    if frames.len() < size {
        frames.resize(size, 0);
    }
    frames
}

fn rfc_plaintext() -> Vec<u8> {
    padded(unhex(RFC_CRYPTO_FRAME), 1162)
}

fn enc_varint(n: u64) -> Vec<u8> {
    if n < 0x40 {
        vec![n as u8]
    } else if n < 0x4000 {
        ((0x4000 | n) as u16).to_be_bytes().to_vec()
    } else {
        ((0x8000_0000 | n) as u32).to_be_bytes().to_vec()
    }
}

fn crypto_frame(offset: u64, data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x06];
    out.extend(enc_varint(offset));
    out.extend(enc_varint(data.len() as u64));
    out.extend_from_slice(data);
    out
}

/// A client Initial as RFC 9001 §5 protects it (pn_len 4, no SCID, no token).
fn seal_initial(dcid: &[u8], payload: &[u8], pn: u32, version: Version) -> Vec<u8> {
    let keys = InitialKeys::derive(dcid, version);
    let bits = version.type_bits(PacketType::Initial);
    let length = 4 + payload.len() + 16;
    let mut header = vec![0xc0 | bits << 4 | 0x03];
    header.extend(version.wire().to_be_bytes());
    header.push(dcid.len() as u8);
    header.extend_from_slice(dcid);
    header.extend([0, 0]); // SCID length, token length
    header.extend((0x4000 | length as u16).to_be_bytes());
    header.extend(pn.to_be_bytes());
    let mut nonce = keys.iv;
    for (n, p) in nonce[8..].iter_mut().zip(pn.to_be_bytes()) {
        *n ^= p;
    }
    let mut body = payload.to_vec();
    let tag = Aes128Gcm::new(&keys.key.into())
        .encrypt_inout_detached(
            &Nonce::<Aes128Gcm>::from(nonce),
            &header,
            body.as_mut_slice().into(),
        )
        .unwrap();
    body.extend_from_slice(&tag);
    let mask = crypto::header_mask(&keys.hp, body[..16].try_into().unwrap());
    let pn_at = header.len() - 4;
    let mut out = header;
    out.extend(body);
    out[0] ^= mask[0] & 0x0f;
    for i in 0..4 {
        out[pn_at + i] ^= mask[1 + i];
    }
    out
}

// ---------------------------------------------------------------- RFC vectors

#[test]
fn rfc_keys_of_both_versions() {
    // RFC 9001 A.1 and RFC 9369 A.1.
    let v1 = InitialKeys::derive(&RFC_DCID, Version::V1);
    assert_eq!(v1.key.to_vec(), unhex("1f369613dd76d5467730efcbe3b1a22d"));
    assert_eq!(v1.iv.to_vec(), unhex("fa044b2f42a3fd3b46fb255c"));
    assert_eq!(v1.hp.to_vec(), unhex("9f50449e04a0e810283a1e9933adedd2"));
    let v2 = InitialKeys::derive(&RFC_DCID, Version::V2);
    assert_eq!(v2.key.to_vec(), unhex("8b1a0bc121284290a29e0971b5cd045d"));
    assert_eq!(v2.iv.to_vec(), unhex("91f73e2351d8fa91660e909f"));
    assert_eq!(v2.hp.to_vec(), unhex("45b95e15235d6f45a6b19cbcb0294ba9"));
}

#[test]
fn rfc9001_header_protection_mask() {
    // RFC 9001 A.2: sample d1b1c98d..., mask 437b9aec36.
    let keys = InitialKeys::derive(&RFC_DCID, Version::V1);
    let sample: [u8; 16] = unhex("d1b1c98dd7689fb8ec11d242b123dc9b")
        .try_into()
        .unwrap();
    assert_eq!(
        crypto::header_mask(&keys.hp, sample)[..5].to_vec(),
        unhex("437b9aec36")
    );
}

#[test]
fn rfc_client_initials_decrypt_to_example_com() {
    for (hex, version) in [(RFC_V1_HEX, QUIC_V1), (RFC_V2_HEX, QUIC_V2)] {
        let packet = unhex(hex);
        assert_eq!(packet.len(), 1200);
        let header = parse_long_header(&packet, 0).unwrap();
        assert_eq!(header.version, version);
        assert_eq!(header.dcid, RFC_DCID);
        assert_eq!(header.kind, Some(PacketType::Initial));
        assert_eq!((header.start, header.pn_offset, header.end), (0, 18, 1200));
        let keys = InitialKeys::derive(header.dcid, Version::from_wire(version).unwrap());
        let plain = crypto::unprotect_initial(&packet, &header, &keys).unwrap();
        assert_eq!(plain, rfc_plaintext());
        let frames = initial_frames(&packet, &header).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!((frames[0].offset, frames[0].data.len()), (0, 241));
        assert_eq!(
            initial_sni(&packet),
            Ok(ServerName::Found(b"example.com".to_vec()))
        );
    }
}

#[test]
fn seal_reproduces_the_rfc_packets() {
    for (hex, version) in [(RFC_V1_HEX, Version::V1), (RFC_V2_HEX, Version::V2)] {
        let mut sealed = seal_initial(&RFC_DCID, &rfc_plaintext(), 2, version);
        // The RFC packets have the helper's layout: 4-byte packet number,
        // 2-byte Length, no SCID, no token.
        assert_eq!(sealed.len(), 1200);
        assert_eq!(sealed, unhex(hex), "{version:?}");
        sealed[100] ^= 1;
        assert_eq!(initial_sni(&sealed), Err(QuicError::DecryptFailed));
    }
}

// ---------------------------------------------------------------- frames, streams

#[test]
fn varint_examples_of_rfc9000() {
    for (hex, value) in [
        ("c2197c5eff14e88c", 151_288_809_941_952_652u64),
        ("9d7f3e7d", 494_878_333),
        ("7bbd", 15_293),
        ("25", 37),
        ("4025", 37),
    ] {
        let raw = unhex(hex);
        assert_eq!(varint(&raw, 0), Ok((value, raw.len())));
    }
    assert_eq!(varint(&[0x7b], 0), Err(QuicError::VarintPastEnd));
    assert_eq!(varint(&[], 0), Err(QuicError::VarintPastEnd));
    assert_eq!(varint(&[0x25], usize::MAX), Err(QuicError::VarintPastEnd));
}

#[test]
fn frames_an_initial_may_hold() {
    let mut plain = vec![0x01]; // PING
    plain.extend([0x02, 0x05, 0x00, 0x01, 0x00, 0x01, 0x02]); // ACK, 1 extra range
    plain.extend([0x03, 0x05, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03]); // ACK_ECN
    plain.extend(crypto_frame(7, b"abc"));
    plain.extend([0x1c, 0x0a, 0x06, 0x02, b'h', b'i']); // CONNECTION_CLOSE
    plain.extend([0x1d, 0x0a, 0x01, b'x']); // CONNECTION_CLOSE (application)
    plain.extend([0u8; 30]); // PADDING
    plain.extend(crypto_frame(0, b"1234567"));
    let frames = crypto_frames(&plain).unwrap();
    let got: Vec<(u64, &[u8])> = frames
        .iter()
        .map(|f| (f.offset, f.data.as_slice()))
        .collect();
    assert_eq!(
        got,
        vec![(7, b"abc".as_slice()), (0, b"1234567".as_slice())]
    );
    assert_eq!(crypto_frames(&[]), Ok(vec![]));
    assert_eq!(crypto_frames(&[0; 10]), Ok(vec![]));
    for (bad, err) in [
        (&[0x08, 0x00][..], QuicError::FrameNotAllowed(0x08)),
        (
            &[0x06, 0x00, 0x05, b'a', b'b'][..],
            QuicError::CryptoFramePastEnd,
        ),
        (&[0x02, 0x05, 0x00, 0x7f][..], QuicError::VarintPastEnd),
        (
            &[0x02, 0x05, 0x00, 0x3f, 0x00][..],
            QuicError::AckRangesTooMany,
        ),
        (
            &[0x1c, 0x01, 0x02, 0x09, b'x'][..],
            QuicError::CloseReasonPastEnd,
        ),
        (
            &[0x06, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
            QuicError::CryptoFramePastEnd,
        ),
    ] {
        assert_eq!(crypto_frames(bad), Err(err), "{bad:02x?}");
    }
}

#[test]
fn crypto_stream_reassembly() {
    let mut s = CryptoStream::new(100, 3);
    assert!(s.add(10, &[b'k'; 10]) && s.prefix().is_empty());
    assert!(s.add(0, &[b'a'; 12]));
    assert_eq!(s.prefix(), [&[b'a'; 12][..], &[b'k'; 8][..]].concat());
    assert!(s.add(0, &[b'a'; 5])); // a shorter retransmission changes nothing
    assert_eq!(s.stored(), 22);
    assert!(!s.add(95, &[b'x'; 6])); // past the limit
    assert!(!s.add(u64::MAX, b"x"));
    assert!(s.add(50, b"z"));
    assert!(!s.add(60, b"y")); // a fourth piece
    assert!(s.add(20, b"")); // empty frames are ignored
    assert!(s.add(50, b"zz")); // a longer piece at the same offset replaces it
    assert_eq!(s.stored(), 24);
    let mut small = CryptoStream::new(10, 64);
    for i in 0..10 {
        assert!(small.add(i, &[1; 1]));
    }
    assert!(small.add(0, &[1; 10]) && !small.add(0, &[1; 11]));
}

#[test]
fn handshake_sni_of_a_stream_in_any_order() {
    let hello = &HELLO_LATE[5..];
    let mut s = CryptoStream::new(DEFAULT_MAX_CRYPTO, DEFAULT_MAX_PIECES);
    let cuts: Vec<usize> = (0..hello.len()).step_by(300).chain([hello.len()]).collect();
    let mut pieces: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
    pieces.reverse();
    let (last, rest) = pieces.split_last().unwrap();
    for &(a, b) in rest {
        assert!(s.add(a as u64, &hello[a..b]));
        assert_eq!(s.server_name(), ServerName::NeedMore);
    }
    assert!(s.add(last.0 as u64, &hello[last.0..last.1]));
    assert_eq!(s.server_name(), ServerName::Found(BLOCKED.to_vec()));
    assert_eq!(s.prefix(), hello);
}

// ---------------------------------------------------------------- datagrams

#[test]
fn shuffled_frames_over_coalesced_initials() {
    let hello = &HELLO_LATE[5..];
    let dcid = [7u8; 8];
    let mut first = crypto_frame(1000, &hello[1000..1500]);
    first.extend(crypto_frame(0, &hello[..1000]));
    let second = crypto_frame(1500, &hello[1500..]);
    for version in [Version::V1, Version::V2] {
        let one = seal_initial(&dcid, &first, 0, version);
        let two = seal_initial(&dcid, &second, 1, version);
        assert_eq!(initial_sni(&one), Ok(ServerName::NeedMore));
        let both = [one.clone(), two.clone()].concat();
        assert_eq!(initial_sni(&both), Ok(ServerName::Found(BLOCKED.to_vec())));
        let header = parse_long_header(&both, 0).unwrap();
        let offsets: Vec<u64> = initial_frames(&both, &header)
            .unwrap()
            .iter()
            .map(|f| f.offset)
            .collect();
        assert_eq!(offsets, vec![1000, 0, 1500]);
        // padding after the packets, or a packet of another connection: not read
        let with_padding = [one.clone(), two.clone(), vec![0; 40]].concat();
        assert_eq!(
            initial_sni(&with_padding),
            Ok(ServerName::Found(BLOCKED.to_vec()))
        );
        let other = seal_initial(&[1u8; 8], &second, 1, version);
        assert_eq!(
            initial_sni(&[one.clone(), other].concat()),
            Ok(ServerName::NeedMore)
        );
        // a coalesced packet that does not decrypt ends the reading, the first counts
        let mut bad = two.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(
            initial_sni(&[one.clone(), bad].concat()),
            Ok(ServerName::NeedMore)
        );
    }
}

#[test]
fn hello_without_name_and_not_a_hello() {
    let packet = seal_initial(
        &[6; 8],
        &padded(crypto_frame(0, &HELLO_NO_SNI[5..]), 1162),
        0,
        Version::V1,
    );
    assert_eq!(initial_sni(&packet), Ok(ServerName::Absent));
    let server_hello = [&[0x02, 0x00, 0x00, 0x10][..], &[0; 16]].concat();
    let packet = seal_initial(
        &[5; 8],
        &padded(crypto_frame(0, &server_hello), 1162),
        0,
        Version::V1,
    );
    assert_eq!(initial_sni(&packet), Ok(ServerName::Malformed));
    let big = seal_initial(&[5; 8], &crypto_frame(20000, b"x"), 0, Version::V1);
    assert_eq!(initial_sni(&big), Err(QuicError::CryptoTooLarge));
}

#[test]
fn headers_that_are_not_initials() {
    let rfc = unhex(RFC_V1_HEX);
    let retry = [&[0xf0, 0, 0, 0, 1, 8][..], &RFC_DCID, &[0], &[0; 40]].concat();
    let h = parse_long_header(&retry, 0).unwrap();
    assert_eq!((h.kind, h.end), (Some(PacketType::Retry), retry.len()));
    assert_eq!(initial_sni(&retry), Err(QuicError::NotInitial));
    let mut handshake = rfc.clone();
    handshake[0] = 0xe3;
    assert_eq!(initial_sni(&handshake), Err(QuicError::NotInitial));
    let mut unknown = rfc.clone();
    unknown[1..5].copy_from_slice(&[0xff, 0, 0, 0x1d]);
    let h = parse_long_header(&unknown, 0).unwrap();
    assert_eq!(
        (h.kind, h.dcid, h.pn_offset, h.end),
        (None, &RFC_DCID[..], 15, 1200)
    );
    assert_eq!(initial_sni(&unknown), Err(QuicError::UnknownVersion));
    let zero_rtt = [
        &[0xd3, 0, 0, 0, 1, 8][..],
        &RFC_DCID,
        &[0, 0x40, 60],
        &[0; 60],
    ]
    .concat();
    let h = parse_long_header(&zero_rtt, 0).unwrap();
    assert_eq!(
        (h.kind, h.pn_offset, h.end),
        (Some(PacketType::ZeroRtt), 17, 77)
    );

    for (bytes, err) in [
        (vec![], QuicError::NotLongHeader),
        (vec![0xc3], QuicError::NotLongHeader),
        ([&[0x43], &[0u8; 60][..]].concat(), QuicError::NotLongHeader),
        (rfc[..10].to_vec(), QuicError::TruncatedConnectionId),
        (rfc[..14].to_vec(), QuicError::TruncatedConnectionId),
        (
            [&[0xc3, 0, 0, 0, 1, 21][..], &[0; 1200]].concat(),
            QuicError::ConnectionIdTooLong,
        ),
        (
            [&rfc[..16], &[0x7f, 0xff], &rfc[18..]].concat(),
            QuicError::PacketPastDatagram,
        ),
        (rfc[..600].to_vec(), QuicError::PacketPastDatagram),
        ([&rfc[..15], &[0x3f]].concat(), QuicError::VarintPastEnd), // token past the end
    ] {
        assert_eq!(
            parse_long_header(&bytes, 0).map(|_| ()),
            Err(err),
            "{:02x?}",
            &bytes[..bytes.len().min(20)]
        );
        assert_eq!(initial_sni(&bytes), Err(err));
    }
    // the udp_probe of the e2e tests: version 1, everything else zero
    let probe = [&[0xc3, 0, 0, 0, 1][..], &[0; 1195]].concat();
    assert_eq!(initial_sni(&probe), Err(QuicError::TooShortForSample));
    assert_eq!(
        parse_long_header(&rfc, 1200).map(|_| ()),
        Err(QuicError::NotLongHeader)
    );
    assert_eq!(
        parse_long_header(&rfc, usize::MAX).map(|_| ()),
        Err(QuicError::NotLongHeader)
    );
}

#[test]
fn headers_not_from_the_parser_are_refused_not_panicked_on() {
    let rfc = unhex(RFC_V1_HEX);
    let keys = InitialKeys::derive(&RFC_DCID, Version::V1);
    let good = parse_long_header(&rfc, 0).unwrap();
    for (start, pn_offset, end) in [
        (30, 18, 1200),
        (18, 18, 1200),
        (0, 18, 5000),
        (0, usize::MAX - 3, usize::MAX),
        (usize::MAX, 18, 1200),
        (0, 1190, 1200),
    ] {
        let forged = LongHeader {
            start,
            pn_offset,
            end,
            ..good
        };
        assert!(crypto::unprotect_initial(&rfc, &forged, &keys).is_err());
        assert!(initial_frames(&rfc, &forged).is_err());
    }
}

#[test]
fn every_truncation_and_byte_flip_of_an_initial_is_an_answer() {
    let rfc = unhex(RFC_V1_HEX);
    for n in 0..rfc.len() {
        assert!(initial_sni(&rfc[..n]).is_err(), "{n}");
    }
    for i in 0..rfc.len() {
        let mut flipped = rfc.clone();
        flipped[i] ^= 0x41;
        // Every byte is covered by the header, the AEAD or the padding
        // check of the length: a flipped one never decrypts.
        assert!(initial_sni(&flipped).is_err(), "{i}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_answered(data in prop::collection::vec(any::<u8>(), 0..1500)) {
        let _ = initial_sni(&data);
        if let Ok(h) = parse_long_header(&data, 0) {
            prop_assert!(h.pn_offset <= data.len() && h.end <= data.len());
        }
        let _ = crypto_frames(&data);
    }

    #[test]
    fn arbitrary_bytes_behind_a_long_header(
        first in any::<u8>(), v2 in any::<bool>(), rest in prop::collection::vec(any::<u8>(), 0..1300)
    ) {
        let version = if v2 { QUIC_V2 } else { QUIC_V1 };
        let data = [&[first | 0x80][..], &version.to_be_bytes(), &[8], &RFC_DCID, &rest].concat();
        let _ = initial_sni(&data);
    }

    #[test]
    fn arbitrary_frames_in_a_sealed_initial(
        plain in prop::collection::vec(any::<u8>(), 1..1200), v2 in any::<bool>()
    ) {
        let version = if v2 { Version::V2 } else { Version::V1 };
        let packet = seal_initial(&RFC_DCID, &plain, 0, version);
        let header = parse_long_header(&packet, 0).unwrap();
        let keys = InitialKeys::derive(&RFC_DCID, version);
        if plain.len() >= 16 {
            prop_assert_eq!(crypto::unprotect_initial(&packet, &header, &keys), Ok(plain.clone()));
        }
        prop_assert_eq!(
            initial_frames(&packet, &header).is_ok(),
            plain.len() >= 16 && crypto_frames(&plain).is_ok()
        );
    }
}
