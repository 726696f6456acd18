//! Reassembly of the contiguous prefix of a flow's byte stream, starting at
//! the first payload byte seen.
//!
//! Duplicates and overlaps are accepted when their bytes agree; when copies of
//! the same byte disagree the stream is ambiguous and the flow must fail open.

use crate::seq::Seq;

/// Outcome of adding one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// Stored (possibly fully redundant with what was there).
    Ok,
    /// The segment reaches beyond the buffer limit.
    Overflow,
    /// Overlapping copies of a byte differ, or the segment starts before the
    /// first byte seen (so the base was not the stream start).
    Ambiguous,
}

#[derive(Debug)]
struct Piece {
    offset: u32,
    bytes: Vec<u8>,
}

/// Contiguous prefix plus out-of-order pieces beyond it.
#[derive(Debug)]
pub struct Assembler {
    base: Seq,
    limit: u32,
    prefix: Vec<u8>,
    pending: Vec<Piece>,
    pending_bytes: usize,
}

impl Assembler {
    /// An assembler whose offset 0 is `base`, holding at most `limit` bytes of
    /// stream (offsets `0..limit`).
    pub fn new(base: Seq, limit: u32) -> Self {
        Assembler {
            base,
            limit,
            prefix: Vec::new(),
            pending: Vec::new(),
            pending_bytes: 0,
        }
    }

    pub fn base(&self) -> Seq {
        self.base
    }

    /// The bytes from offset 0 that are known without gaps.
    pub fn contiguous(&self) -> &[u8] {
        &self.prefix
    }

    /// Bytes stored in total (prefix and pending pieces).
    pub fn stored(&self) -> usize {
        self.prefix.len() + self.pending_bytes
    }

    /// Adds the payload of a segment starting at sequence number `seq`.
    pub fn add(&mut self, seq: Seq, data: &[u8]) -> Added {
        if data.is_empty() {
            return Added::Ok;
        }
        let start = seq.offset_from(self.base);
        if start < 0 {
            return Added::Ambiguous;
        }
        let end = start + data.len() as i64;
        if end > i64::from(self.limit) {
            return Added::Overflow;
        }
        let (start, end) = (start as usize, end as usize);
        if !self.agrees(start, data) {
            return Added::Ambiguous;
        }
        if end <= self.prefix.len() {
            return Added::Ok;
        }
        if start <= self.prefix.len() {
            self.prefix
                .extend_from_slice(&data[self.prefix.len() - start..]);
            self.absorb_pending();
        } else {
            self.pending_bytes += data.len();
            self.pending.push(Piece {
                offset: start as u32,
                bytes: data.to_vec(),
            });
        }
        Added::Ok
    }

    /// Whether `data` at `start` matches every byte already known there.
    fn agrees(&self, start: usize, data: &[u8]) -> bool {
        let end = start + data.len();
        let same = |known_start: usize, known: &[u8]| {
            let lo = start.max(known_start);
            let hi = end.min(known_start + known.len());
            lo >= hi || data[lo - start..hi - start] == known[lo - known_start..hi - known_start]
        };
        same(0, &self.prefix)
            && self
                .pending
                .iter()
                .all(|p| same(p.offset as usize, &p.bytes))
    }

    /// Moves pending pieces that now touch the prefix into it.
    fn absorb_pending(&mut self) {
        loop {
            let len = self.prefix.len();
            let Some(i) = self.pending.iter().position(|p| p.offset as usize <= len) else {
                return;
            };
            let piece = self.pending.swap_remove(i);
            self.pending_bytes -= piece.bytes.len();
            let piece_end = piece.offset as usize + piece.bytes.len();
            if piece_end > len {
                self.prefix
                    .extend_from_slice(&piece.bytes[len - piece.offset as usize..]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_segments_extend_the_prefix() {
        let mut a = Assembler::new(Seq(100), 1000);
        assert_eq!(a.add(Seq(100), b"abc"), Added::Ok);
        assert_eq!(a.add(Seq(103), b"def"), Added::Ok);
        assert_eq!(a.contiguous(), b"abcdef");
    }

    #[test]
    fn gaps_wait_and_out_of_order_fills_them() {
        let mut a = Assembler::new(Seq(0), 1000);
        a.add(Seq(6), b"ghi");
        a.add(Seq(3), b"def");
        assert_eq!(a.contiguous(), b"");
        assert_eq!(a.stored(), 6);
        a.add(Seq(0), b"abc");
        assert_eq!(a.contiguous(), b"abcdefghi");
        assert_eq!(a.stored(), 9);
    }

    #[test]
    fn duplicates_and_consistent_overlaps_are_fine() {
        let mut a = Assembler::new(Seq(0), 1000);
        a.add(Seq(0), b"abcd");
        assert_eq!(a.add(Seq(0), b"abcd"), Added::Ok);
        assert_eq!(a.add(Seq(2), b"cdef"), Added::Ok);
        assert_eq!(a.contiguous(), b"abcdef");
    }

    #[test]
    fn conflicting_overlap_is_ambiguous() {
        let mut a = Assembler::new(Seq(0), 1000);
        a.add(Seq(0), b"abcd");
        assert_eq!(a.add(Seq(2), b"XX"), Added::Ambiguous);
        let mut a = Assembler::new(Seq(0), 1000);
        a.add(Seq(10), b"klmn");
        assert_eq!(a.add(Seq(8), b"ijKL"), Added::Ambiguous);
    }

    #[test]
    fn data_before_base_is_ambiguous() {
        let mut a = Assembler::new(Seq(50), 1000);
        assert_eq!(a.add(Seq(48), b"xyz"), Added::Ambiguous);
    }

    #[test]
    fn limit_boundary() {
        let mut a = Assembler::new(Seq(0), 8);
        assert_eq!(a.add(Seq(0), b"12345678"), Added::Ok);
        assert_eq!(a.add(Seq(8), b"9"), Added::Overflow);
    }

    #[test]
    fn sequence_wrap() {
        let mut a = Assembler::new(Seq(u32::MAX - 1), 100);
        a.add(Seq(1), b"def");
        a.add(Seq(u32::MAX - 1), b"abc");
        assert_eq!(a.contiguous(), b"abcdef");
    }

    proptest! {
        #[test]
        fn any_delivery_order_reassembles(
            data in proptest::collection::vec(any::<u8>(), 1..600),
            cuts in proptest::collection::vec(any::<u16>(), 0..12),
            order in proptest::collection::vec(any::<u16>(), 0..40),
            base in any::<u32>(),
        ) {
            let mut points: Vec<usize> = cuts.iter().map(|c| *c as usize % data.len()).collect();
            points.push(0);
            points.push(data.len());
            points.sort_unstable();
            points.dedup();
            let mut segs: Vec<(usize, usize)> = points.windows(2).map(|w| (w[0], w[1])).collect();
            // Deliver in a shuffled order with some duplicates.
            for (i, o) in order.iter().enumerate() {
                let n = segs.len();
                if i % 3 == 0 { let s = segs[*o as usize % n]; segs.push(s); }
                else { segs.swap(i % n, *o as usize % n); }
            }
            let mut a = Assembler::new(Seq(base), 1000);
            for (s, e) in segs {
                prop_assert_eq!(a.add(Seq(base).plus(s as u32), &data[s..e]), Added::Ok);
            }
            prop_assert_eq!(a.contiguous(), &data[..]);
        }
    }
}
