//! The split plan: where the first record is cut, and how the pieces are
//! bounded in size.

use crate::config::SplitPos;
use crate::tls::{self, SniScan};

/// The host name of a record, as byte offsets from the record start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostSpan {
    pub start: u32,
    pub len: u32,
    /// Offset and length of the second-level label (`example` in
    /// `www.example.com`; the only label of a single-label name).
    pub sld_start: u32,
    pub sld_len: u32,
}

/// Locates the SNI host name in a complete or partial record.
pub fn host_span(record: &[u8]) -> Option<HostSpan> {
    let SniScan::Found(sni) = tls::find_sni(record) else {
        return None;
    };
    let host = record.get(sni.offset..sni.offset + sni.len)?;
    let trimmed = host.strip_suffix(b".").unwrap_or(host);
    let labels: Vec<(usize, usize)> = {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, b) in trimmed.iter().enumerate() {
            if *b == b'.' {
                out.push((start, i - start));
                start = i + 1;
            }
        }
        out.push((start, trimmed.len() - start));
        out
    };
    let (sld_rel, sld_len) = if labels.len() >= 2 {
        labels[labels.len() - 2]
    } else {
        labels[0]
    };
    Some(HostSpan {
        start: sni.offset as u32,
        len: sni.len as u32,
        sld_start: (sni.offset + sld_rel) as u32,
        sld_len: sld_len as u32,
    })
}

/// Resolves the configured cut positions against a window of `window` bytes.
/// Returns sorted, distinct offsets strictly inside the window; positions
/// that fall outside, coincide, or need an SNI the record lacks are dropped.
pub fn cut_points(
    chunk: u32,
    positions: &[SplitPos],
    host: Option<HostSpan>,
    window: u32,
) -> Vec<u32> {
    let mut cuts = Vec::with_capacity(positions.len() + 1);
    if chunk > 0 {
        cuts.push(i64::from(chunk));
    }
    for pos in positions {
        let at = match (*pos, host) {
            (SplitPos::Abs(n), _) => Some(i64::from(n)),
            (SplitPos::Sni(d), Some(h)) => Some(i64::from(h.start) + i64::from(d)),
            (SplitPos::SniEnd(d), Some(h)) => Some(i64::from(h.start + h.len) + i64::from(d)),
            (SplitPos::MidSld(d), Some(h)) => {
                Some(i64::from(h.sld_start + h.sld_len / 2) + i64::from(d))
            }
            _ => None,
        };
        cuts.extend(at);
    }
    let mut cuts: Vec<u32> = cuts
        .into_iter()
        .filter(|c| *c > 0 && *c < i64::from(window))
        .map(|c| c as u32)
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// Cuts `[from, to)` at `cuts` and then into pieces of at most `limit` bytes.
/// Returns the half-open ranges in stream order.
pub fn pieces(from: u32, to: u32, cuts: &[u32], limit: u32) -> Vec<(u32, u32)> {
    let limit = limit.max(1);
    let mut out = Vec::with_capacity(cuts.len() + 2);
    let mut start = from;
    let inner = cuts.iter().copied().filter(|c| *c > from && *c < to);
    for end in inner.chain(std::iter::once(to)) {
        while end - start > limit {
            out.push((start, start + limit));
            start += limit;
        }
        if end > start {
            out.push((start, end));
        }
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plan_is_one_cut_at_five() {
        assert_eq!(cut_points(5, &[], None, 517), vec![5]);
        assert_eq!(pieces(0, 517, &[5], 1460), vec![(0, 5), (5, 517)]);
    }

    #[test]
    fn pieces_respect_the_size_limit() {
        assert_eq!(
            pieces(0, 2000, &[5], 1448),
            vec![(0, 5), (5, 1453), (1453, 2000)]
        );
        assert_eq!(pieces(0, 10, &[], 4), vec![(0, 4), (4, 8), (8, 10)]);
        assert_eq!(pieces(3, 9, &[1, 5, 9, 12], 100), vec![(3, 5), (5, 9)]);
    }

    #[test]
    fn sni_relative_positions() {
        // "www.example.com" at offset 100: sld "example" at 104, length 7.
        let h = HostSpan {
            start: 100,
            len: 15,
            sld_start: 104,
            sld_len: 7,
        };
        let pos = [
            SplitPos::Sni(0),
            SplitPos::MidSld(0),
            SplitPos::SniEnd(-1),
            SplitPos::Sni(1),
        ];
        assert_eq!(
            cut_points(5, &pos, Some(h), 300),
            vec![5, 100, 101, 107, 114]
        );
    }

    #[test]
    fn out_of_window_and_duplicate_positions_are_dropped() {
        let pos = [
            SplitPos::Abs(5),
            SplitPos::Abs(600),
            SplitPos::Sni(0),
            SplitPos::Abs(517),
        ];
        assert_eq!(cut_points(5, &pos, None, 517), vec![5]);
        assert_eq!(
            cut_points(0, &[SplitPos::Sni(-200)], None, 517),
            Vec::<u32>::new()
        );
        let h = HostSpan {
            start: 10,
            len: 4,
            sld_start: 10,
            sld_len: 4,
        };
        assert_eq!(
            cut_points(0, &[SplitPos::Sni(-20)], Some(h), 517),
            Vec::<u32>::new()
        );
    }
}
