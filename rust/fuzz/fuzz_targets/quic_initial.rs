//! Arbitrary bytes through the QUIC Initial reading of `govpass_core::quic`:
//! as a UDP payload (`initial_sni`, which parses the long header and tries
//! the Initial keys of its DCID) and, since random bytes almost never pass
//! the AEAD, as a decrypted payload (the frame walk, the CRYPTO stream and
//! the SNI behind it). Checked, besides "no panic":
//!
//! - a parsed long header lies inside the input (`pn_offset <= end <= len`),
//!   with connection IDs of at most 20 bytes in versions 1 and 2;
//! - every CRYPTO frame's data lies inside the input;
//! - the CRYPTO stream keeps its bounds (`stored <= 2 * limit`, the prefix
//!   at most `limit` bytes) and a name found is non-empty and part of the
//!   prefix.

#![no_main]

use govpass_core::quic::{self, CryptoStream, ServerName};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let _ = quic::initial_sni(data);
    if let Ok(header) = quic::parse_long_header(data, 0) {
        assert!(header.pn_offset <= header.end && header.end <= data.len());
        if header.kind.is_some() {
            assert!(header.dcid.len() <= quic::MAX_CID_LEN);
        }
    }

    let Ok(frames) = quic::crypto_frames(data) else {
        return;
    };
    let mut stream = CryptoStream::new(LIMIT, 8);
    for frame in &frames {
        assert!(frame.data.len() <= data.len());
        if !stream.add(frame.offset, &frame.data) {
            break;
        }
        assert!(stream.stored() <= 2 * LIMIT);
    }
    let prefix = stream.prefix();
    assert!(prefix.len() <= LIMIT);
    if let ServerName::Found(name) = stream.server_name() {
        assert!(!name.is_empty());
        assert!(prefix.windows(name.len()).any(|w| w == name.as_slice()));
    }
});
