//! The Initial packet protection of a client's packets (RFC 9001 §5.2-§5.4;
//! RFC 9369 §3.3 for the v2 salt and labels): HKDF-SHA256 key derivation,
//! AES-128 header protection and AES-128-GCM payload protection.

use aes::cipher::{BlockCipherEncrypt, KeyInit};
use aes::Aes128;
use aes_gcm::aead::{AeadInOut, Nonce, Tag};
use aes_gcm::Aes128Gcm;
use hkdf::Hkdf;
use sha2::Sha256;

use super::{LongHeader, QuicError, Version};

const SALT_V1: [u8; 20] = [
    0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad,
    0xcc, 0xbb, 0x7f, 0x0a,
];
const SALT_V2: [u8; 20] = [
    0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb,
    0xf9, 0xbd, 0x2e, 0xd9,
];

/// The header protection sample is 16 bytes (AES), taken as if the packet
/// number were 4 bytes long (RFC 9001 §5.4.2).
pub const SAMPLE_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// The longest label used here: "quicv2 " + "key" etc., with "tls13 ".
const MAX_LABEL_LEN: usize = 32;

/// The client's Initial packet protection keys for one DCID and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialKeys {
    pub key: [u8; 16],
    pub iv: [u8; 12],
    pub hp: [u8; 16],
}

impl InitialKeys {
    pub fn derive(dcid: &[u8], version: Version) -> InitialKeys {
        let salt: &[u8] = match version {
            Version::V1 => &SALT_V1,
            Version::V2 => &SALT_V2,
        };
        let prefix: &[u8] = match version {
            Version::V1 => b"quic ",
            Version::V2 => b"quicv2 ",
        };
        let initial = Hkdf::<Sha256>::new(Some(salt), dcid);
        let mut client_secret = [0u8; 32];
        expand_label(&initial, &[b"client in"], &mut client_secret);
        // A PRK of 32 bytes is the hash length: `from_prk` cannot refuse it.
        let client = Hkdf::<Sha256>::from_prk(&client_secret).unwrap_or(initial);
        let mut keys = InitialKeys {
            key: [0; 16],
            iv: [0; 12],
            hp: [0; 16],
        };
        expand_label(&client, &[prefix, b"key"], &mut keys.key);
        expand_label(&client, &[prefix, b"iv"], &mut keys.iv);
        expand_label(&client, &[prefix, b"hp"], &mut keys.hp);
        keys
    }
}

/// TLS 1.3 HKDF-Expand-Label (RFC 8446 §7.1) with an empty context; the
/// label is the concatenation of `label` after "tls13 ".
fn expand_label(hkdf: &Hkdf<Sha256>, label: &[&[u8]], out: &mut [u8]) {
    let mut full = [0u8; MAX_LABEL_LEN];
    let mut len = 0;
    for part in core::iter::once(b"tls13 ".as_slice()).chain(label.iter().copied()) {
        full[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    }
    // Lengths here are constants (at most 32 bytes out, labels under 32).
    let out_len = u16::try_from(out.len()).unwrap_or(0).to_be_bytes();
    let label_len = [u8::try_from(len).unwrap_or(0)];
    let info: [&[u8]; 4] = [&out_len, &label_len, &full[..len], &[0u8]];
    // Expanding to at most 255 hash lengths cannot fail; 32 bytes is one.
    let _ = hkdf.expand_multi_info(&info, out);
}

/// The plaintext (the frames) of the Initial packet `header` describes.
pub fn unprotect_initial(
    buf: &[u8],
    header: &LongHeader<'_>,
    keys: &InitialKeys,
) -> Result<Vec<u8>, QuicError> {
    let pn_offset = header.pn_offset;
    let sample_at = pn_offset
        .checked_add(4)
        .ok_or(QuicError::TooShortForSample)?;
    let sample: [u8; SAMPLE_LEN] = sample_at
        .checked_add(SAMPLE_LEN)
        .filter(|&stop| stop <= header.end)
        .and_then(|stop| buf.get(sample_at..stop))
        .and_then(|s| s.try_into().ok())
        .ok_or(QuicError::TooShortForSample)?;
    let mask = header_mask(&keys.hp, sample);
    let first_byte = *buf.get(header.start).ok_or(QuicError::NotLongHeader)?;
    let first = first_byte ^ (mask[0] & 0x0f); // long header: the low 4 bits
    let pn_len = usize::from(first & 0x03) + 1;
    // sample_at + 16 <= end: the (at most 4) packet number bytes are there.
    let mut pn_bytes = [0u8; 4];
    for (i, out) in pn_bytes.iter_mut().take(pn_len).enumerate() {
        let byte = *buf.get(pn_offset + i).ok_or(QuicError::TooShortForSample)?;
        *out = byte ^ mask[1 + i];
    }
    // A client's Initial packet numbers start at 0 and stay small: the
    // truncated number is taken as the full one.
    let pn = pn_bytes[..pn_len]
        .iter()
        .fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
    let mut nonce = keys.iv;
    for (n, p) in nonce[8..].iter_mut().zip(pn.to_be_bytes()) {
        *n ^= p;
    }

    // The header as sent, with the first byte and the packet number unmasked.
    let rest_of_header = buf
        .get(header.start..pn_offset)
        .and_then(|head| head.get(1..))
        .ok_or(QuicError::NotLongHeader)?;
    let mut aad = Vec::with_capacity(1 + rest_of_header.len() + pn_len);
    aad.push(first);
    aad.extend_from_slice(rest_of_header);
    aad.extend_from_slice(&pn_bytes[..pn_len]);

    let sealed = buf
        .get(pn_offset + pn_len..header.end)
        .ok_or(QuicError::TooShortForSample)?;
    let Some(body_len) = sealed.len().checked_sub(TAG_LEN) else {
        return Err(QuicError::DecryptFailed);
    };
    let (body, tag) = sealed.split_at(body_len);
    let tag = Tag::<Aes128Gcm>::try_from(tag).map_err(|_| QuicError::DecryptFailed)?;
    let mut plain = body.to_vec();
    let aead = Aes128Gcm::new(&keys.key.into());
    aead.decrypt_inout_detached(
        &Nonce::<Aes128Gcm>::from(nonce),
        &aad,
        plain.as_mut_slice().into(),
        &tag,
    )
    .map_err(|_| QuicError::DecryptFailed)?;
    Ok(plain)
}

/// AES-128-ECB of the sample with the header protection key: the mask.
pub fn header_mask(hp: &[u8; 16], sample: [u8; SAMPLE_LEN]) -> [u8; 16] {
    let cipher = Aes128::new(&(*hp).into());
    let mut block = sample.into();
    cipher.encrypt_block(&mut block);
    block.into()
}
