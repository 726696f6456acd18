//! Internet checksums (RFC 1071) for IPv4 headers and TCP over IPv4/IPv6.

/// Adds `data` as big-endian 16-bit words to a 32-bit running sum.
#[inline]
pub fn sum_words(mut acc: u64, mut data: &[u8]) -> u64 {
    // Slice patterns rather than `chunks_exact`: the same code at any supported
    // Rust version (`as_chunks`, which newer clippy suggests, needs 1.88).
    while let [a, b, c, d, e, f, g, h, rest @ ..] = data {
        let v = u64::from_be_bytes([*a, *b, *c, *d, *e, *f, *g, *h]);
        // Split into two 32-bit halves so the 64-bit accumulator cannot overflow
        // for any packet size we handle.
        acc += v >> 32;
        acc += v & 0xffff_ffff;
        data = rest;
    }
    while let [a, b, rest @ ..] = data {
        acc += u64::from(u16::from_be_bytes([*a, *b]));
        data = rest;
    }
    if let [last] = data {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a running sum into the final one's-complement checksum.
#[inline]
pub fn finish(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Checksum of an IPv4 header whose checksum field is zeroed.
pub fn ipv4_header(header: &[u8]) -> u16 {
    finish(sum_words(0, header))
}

/// TCP checksum over IPv4: pseudo header plus `segment` (header and payload,
/// checksum field zeroed).
pub fn tcp_ipv4(src: [u8; 4], dst: [u8; 4], segment: &[u8]) -> u16 {
    let mut acc = sum_words(0, &src);
    acc = sum_words(acc, &dst);
    acc += 6 + segment.len() as u64;
    finish(sum_words(acc, segment))
}

/// TCP checksum over IPv6: pseudo header plus `segment`.
pub fn tcp_ipv6(src: [u8; 16], dst: [u8; 16], segment: &[u8]) -> u16 {
    let mut acc = sum_words(0, &src);
    acc = sum_words(acc, &dst);
    acc += 6 + segment.len() as u64;
    finish(sum_words(acc, segment))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // The example bytes of RFC 1071 section 3 sum to 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(finish(sum_words(0, &data)), !0xddf2);
    }

    #[test]
    fn known_ipv4_header() {
        // A header from a real capture; its checksum field was 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&h), 0xb861);
        h[10] = 0xb8;
        h[11] = 0x61;
        assert_eq!(finish(sum_words(0, &h)), 0);
    }

    #[test]
    fn odd_lengths_pad_with_zero() {
        assert_eq!(
            finish(sum_words(0, &[0xab])),
            finish(sum_words(0, &[0xab, 0x00]))
        );
        let long: Vec<u8> = (0..1001u32).map(|i| (i * 7) as u8).collect();
        let mut naive = 0u64;
        for pair in long.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            naive += hi + pair.get(1).map_or(0, |b| u64::from(*b));
        }
        assert_eq!(finish(sum_words(0, &long)), finish(naive));
    }
}
