//! Host name lists: a name matches an entry equal to it or to one of its
//! parent domains (`example.com` matches `www.example.com`), unless the entry
//! was written `^example.com`, which matches only that exact name.

use hashbrown::HashSet;

use crate::targeting::{line_count, text_lines, ListError, Skipped};

/// Longest DNS name, in bytes.
const MAX_NAME: usize = 253;

#[derive(Debug, Default, Clone)]
pub struct HostSet {
    suffix: HashSet<Box<[u8]>, foldhash::fast::RandomState>,
    exact: HashSet<Box<[u8]>, foldhash::fast::RandomState>,
}

/// Lower-cases `name` into `buf` and drops one trailing dot.
fn normalize<'a>(name: &[u8], buf: &'a mut [u8; MAX_NAME + 1]) -> Option<&'a [u8]> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME {
        return None;
    }
    for (d, s) in buf.iter_mut().zip(name) {
        *d = s.to_ascii_lowercase();
    }
    Some(&buf[..name.len()])
}

fn valid_label_bytes(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with(b".")
        && !name.windows(2).any(|w| w == b"..")
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Sets with more entries than this are freed on a thread of their own.
const FREE_ASIDE: usize = 65_536;

impl Drop for HostSet {
    /// Freeing a million names takes a large fraction of a second, and the last
    /// reference usually goes in a worker's packet loop, when new lists replace
    /// the old ones. A large set is freed on a short-lived thread instead (inline
    /// when no thread can be started).
    fn drop(&mut self) {
        if self.len() <= FREE_ASIDE {
            return;
        }
        let sets = (
            std::mem::take(&mut self.suffix),
            std::mem::take(&mut self.exact),
        );
        // A spawn that fails drops the closure, and with it the sets, here.
        let _ = std::thread::Builder::new()
            .name("govpass-free".into())
            .spawn(move || drop(sets));
    }
}

impl HostSet {
    /// Builds a set from list lines. Blank lines and lines starting with `#`
    /// are skipped; anything after `#` on a line is a comment. A line that is
    /// not a host name is an error naming the line.
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<HostSet, ListError> {
        Self::parse_lines(lines, HostSet::default(), None)
    }

    /// Builds a set from a list file's bytes (see [`text_lines`]). With
    /// `skipped`, a line that is not a host name is left out and counted
    /// there instead of being an error (data that is not UTF-8 still is).
    pub fn from_bytes(data: &[u8], skipped: Option<&mut Skipped>) -> Result<HostSet, ListError> {
        let lines = text_lines(data)?;
        // Room for a name a line up front: a million names are not rehashed
        // on the way (comments and `^` entries make it an overestimate).
        let room = line_count(data) + 1;
        let set = HostSet {
            suffix: HashSet::with_capacity_and_hasher(room, Default::default()),
            exact: HashSet::default(),
        };
        Self::parse_lines(lines, set, skipped)
    }

    fn parse_lines<'a>(
        lines: impl IntoIterator<Item = &'a str>,
        mut set: HostSet,
        mut skipped: Option<&mut Skipped>,
    ) -> Result<HostSet, ListError> {
        for (i, raw) in lines.into_iter().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (exact, name) = match line.strip_prefix('^') {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
            if !valid_label_bytes(name.as_bytes()) {
                match skipped.as_deref_mut() {
                    Some(s) => {
                        s.add(i + 1);
                        continue;
                    }
                    None => return Err(ListError::entry(i + 1, raw)),
                }
            }
            let entry = name.into_bytes().into_boxed_slice();
            if exact {
                set.exact.insert(entry);
            } else {
                set.suffix.insert(entry);
            }
        }
        if set.suffix.capacity() > 2 * set.suffix.len() + 16 {
            set.suffix.shrink_to_fit();
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.suffix.len() + self.exact.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds one name (suffix entry); used for names learned at run time.
    pub fn insert(&mut self, name: &[u8]) -> bool {
        let mut buf = [0u8; MAX_NAME + 1];
        match normalize(name, &mut buf) {
            Some(n) => self.suffix.insert(n.to_vec().into_boxed_slice()),
            None => false,
        }
    }

    /// Whether `host` (as sent in the SNI, any case) is in the set.
    pub fn contains(&self, host: &[u8]) -> bool {
        let mut buf = [0u8; MAX_NAME + 1];
        let Some(name) = normalize(host, &mut buf) else {
            return false;
        };
        if self.exact.contains(name) {
            return true;
        }
        if self.suffix.is_empty() {
            return false;
        }
        let mut rest = name;
        loop {
            if self.suffix.contains(rest) {
                return true;
            }
            match rest.iter().position(|b| *b == b'.') {
                Some(dot) => rest = &rest[dot + 1..],
                None => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(lines: &[&str]) -> HostSet {
        HostSet::parse(lines.iter().copied()).unwrap()
    }

    #[test]
    fn a_large_set_is_freed_aside_and_its_clones_stay_whole() {
        let lines: Vec<String> = (0..FREE_ASIDE + 10)
            .map(|i| format!("n{i}.example"))
            .collect();
        let big = HostSet::parse(lines.iter().map(String::as_str)).unwrap();
        let copy = big.clone();
        drop(big);
        assert_eq!(copy.len(), FREE_ASIDE + 10);
        assert!(copy.contains(b"www.n7.example"));
    }

    #[test]
    fn subdomains_match_unless_exact() {
        let s = set(&[
            "example.com",
            "^only.org",
            "# comment",
            "",
            "  spaced.net  # trailing",
        ]);
        assert!(s.contains(b"example.com"));
        assert!(s.contains(b"www.Example.COM"));
        assert!(s.contains(b"a.b.example.com."));
        assert!(!s.contains(b"badexample.com"));
        assert!(!s.contains(b"com"));
        assert!(s.contains(b"only.org"));
        assert!(!s.contains(b"www.only.org"));
        assert!(s.contains(b"x.spaced.net"));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn invalid_lines_are_errors_with_line_numbers() {
        let err = HostSet::parse(["ok.example", "not a host"]).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(HostSet::parse(["a..b"]).is_err());
        assert!(HostSet::parse(["*.example.com"]).is_err());
        assert!(HostSet::parse([".example.com"]).is_err());
    }

    #[test]
    fn from_bytes_is_parse_of_the_lines() {
        let s =
            HostSet::from_bytes(b"\xef\xbb\xbfA.example\r\n# c\n^b.example # x\n", None).unwrap();
        assert_eq!(s.len(), 2);
        assert!(s.contains(b"www.a.example") && s.contains(b"b.example"));
        let err = HostSet::from_bytes(b"ok.example\n\n# c\nbad host\n", None).unwrap_err();
        assert_eq!(err.to_string(), "line 4: \"bad host\" is not a valid entry");
        // The UTF-8 check comes first, as for a file decoded whole.
        let err = HostSet::from_bytes(b"bad host\n\xff\n", None).unwrap_err();
        assert_eq!(err.to_string(), "line 2: not UTF-8 text");
    }

    #[test]
    fn lenient_parse_skips_bad_lines_and_counts_them() {
        let data: String = (1..=9)
            .map(|i| {
                if i % 2 == 0 {
                    format!("bad {i}\n")
                } else {
                    format!("n{i}.example\n")
                }
            })
            .chain([
                "x..y\n".to_string(),
                "# fine\n".to_string(),
                "^\n".to_string(),
            ])
            .collect();
        let mut skipped = Skipped::default();
        let s = HostSet::from_bytes(data.as_bytes(), Some(&mut skipped)).unwrap();
        assert_eq!(s.len(), 5);
        assert!(s.contains(b"n9.example"));
        assert_eq!(skipped.count, 6);
        assert_eq!(skipped.first, [2, 4, 6, 8, 10]);
        let mut none = Skipped::default();
        HostSet::from_bytes(b"a.example\n", Some(&mut none)).unwrap();
        assert_eq!(none, Skipped::default());
        assert!(HostSet::from_bytes(b"\xff", Some(&mut none)).is_err());
    }

    #[test]
    fn runtime_insert() {
        let mut s = HostSet::default();
        assert!(!s.contains(b"x.example"));
        s.insert(b"Example.");
        assert!(s.contains(b"x.example"));
    }
}
