//! IP address sets: addresses and CIDR prefixes of both families, stored as
//! sorted, merged ranges so a lookup is one binary search.

use std::net::IpAddr;

use crate::targeting::{text_lines, ListError};

#[derive(Debug, Default, Clone)]
pub struct IpSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

fn merge<T: Ord + Copy>(mut ranges: Vec<(T, T)>, next: impl Fn(T) -> Option<T>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        if let Some(last) = out.last_mut() {
            // Adjacent or overlapping: extend.
            if next(last.1).is_none_or(|n| lo <= n) {
                if hi > last.1 {
                    last.1 = hi;
                }
                continue;
            }
        }
        out.push((lo, hi));
    }
    out
}

fn find<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    let i = ranges.partition_point(|(lo, _)| *lo <= x);
    i > 0 && ranges[i - 1].1 >= x
}

impl IpSet {
    /// Builds a set from lines of `ADDR` or `ADDR/LEN`, both families mixed.
    /// Blank lines and `#` comments are skipped; a bad line is an error.
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<IpSet, ListError> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (i, raw) in lines.into_iter().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = || ListError::entry(i + 1, raw);
            let (addr, len) = match line.split_once('/') {
                Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| bad())?)),
                None => (line, None),
            };
            match addr.parse::<IpAddr>().map_err(|_| bad())? {
                IpAddr::V4(a) => {
                    let len = u32::from(len.unwrap_or(32));
                    if len > 32 {
                        return Err(bad());
                    }
                    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                    let lo = u32::from(a) & mask;
                    v4.push((lo, lo | !mask));
                }
                IpAddr::V6(a) => {
                    let len = u32::from(len.unwrap_or(128));
                    if len > 128 {
                        return Err(bad());
                    }
                    let mask = if len == 0 {
                        0
                    } else {
                        u128::MAX << (128 - len)
                    };
                    let lo = u128::from(a) & mask;
                    v6.push((lo, lo | !mask));
                }
            }
        }
        Ok(IpSet {
            v4: merge(v4, |x| x.checked_add(1)),
            v6: merge(v6, |x| x.checked_add(1)),
        })
    }

    /// Builds a set from a list file's bytes (see [`text_lines`]).
    pub fn from_bytes(data: &[u8]) -> Result<IpSet, ListError> {
        Self::parse(text_lines(data)?)
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Number of merged ranges.
    pub fn ranges(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Looks up an address given as 16 bytes (IPv4 in the first 4 when `v6`
    /// is false), as the flow key stores it.
    pub fn contains(&self, addr: &[u8; 16], v6: bool) -> bool {
        if v6 {
            find(&self.v6, u128::from_be_bytes(*addr))
        } else {
            find(
                &self.v4,
                u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..4].copy_from_slice(&a);
        k
    }

    #[test]
    fn prefixes_and_addresses() {
        let s = IpSet::parse(["203.0.113.0/24", "198.51.100.7", "2001:db8::/32", "# c"]).unwrap();
        assert!(s.contains(&v4([203, 0, 113, 200]), false));
        assert!(!s.contains(&v4([203, 0, 114, 0]), false));
        assert!(s.contains(&v4([198, 51, 100, 7]), false));
        assert!(!s.contains(&v4([198, 51, 100, 8]), false));
        let a: std::net::Ipv6Addr = "2001:db8:1::5".parse().unwrap();
        assert!(s.contains(&a.octets(), true));
        let b: std::net::Ipv6Addr = "2001:db9::".parse().unwrap();
        assert!(!s.contains(&b.octets(), true));
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        let s = IpSet::parse(["10.0.0.0/24", "10.0.1.0/24", "10.0.0.128/25", "0.0.0.0/0"]);
        assert_eq!(s.unwrap().ranges(), 1);
        let s = IpSet::parse(["10.0.0.0/24", "10.0.2.0/24"]).unwrap();
        assert_eq!(s.ranges(), 2);
        assert!(!s.contains(&v4([10, 0, 1, 1]), false));
    }

    #[test]
    fn bad_lines() {
        assert_eq!(IpSet::parse(["1.2.3.4", "1.2.3.4/33"]).unwrap_err().line, 2);
        assert!(IpSet::parse(["example.com"]).is_err());
        assert!(IpSet::parse(["::/129"]).is_err());
    }
}
