//! TCP sequence numbers: arithmetic modulo 2^32.

use std::fmt;

/// A TCP sequence number. All arithmetic wraps at 2^32.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Seq(pub u32);

impl Seq {
    /// The sequence number `n` bytes after this one.
    #[inline]
    pub fn plus(self, n: u32) -> Seq {
        Seq(self.0.wrapping_add(n))
    }

    /// Signed distance from `base` to `self`: positive when `self` lies after
    /// `base` within half the sequence space, negative when before.
    #[inline]
    pub fn offset_from(self, base: Seq) -> i64 {
        i64::from(self.0.wrapping_sub(base.0) as i32)
    }
}

impl fmt::Debug for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seq({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_wrap_around_zero() {
        let base = Seq(u32::MAX - 2);
        assert_eq!(base.plus(5), Seq(2));
        assert_eq!(Seq(2).offset_from(base), 5);
        assert_eq!(base.offset_from(Seq(2)), -5);
    }

    #[test]
    fn offsets_within_half_space() {
        let base = Seq(10);
        assert_eq!(Seq(10).offset_from(base), 0);
        assert_eq!(base.plus(0x7fff_ffff).offset_from(base), 0x7fff_ffff);
        assert_eq!(base.plus(0x8000_0000).offset_from(base), -0x8000_0000);
    }
}
