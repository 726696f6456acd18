//! Targeting: which flows are reshaped, and how. Ordered profiles, first
//! match wins; each has filters (host lists, IP sets, ports, family,
//! interface) and an action (split with its own strategy, or pass).

pub mod destination;
pub mod hosts;
pub mod ipset;
pub mod profile;

use std::fmt;

pub use destination::choose_for_destination;
pub use hosts::HostSet;
pub use ipset::IpSet;
pub use profile::{
    preselect, select, Choice, Family, FlowFacts, Pre, Profile, ProfileAction, Strategy,
};

/// Why a list was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A line that is neither blank, a comment nor a valid entry (its text, trimmed).
    Entry(String),
    /// The data is not UTF-8 text; the line holds the first bad byte.
    NotUtf8,
}

/// A list that cannot be used, and the line that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListError {
    /// 1-based line number.
    pub line: usize,
    pub problem: Problem,
}

impl ListError {
    fn entry(line: usize, raw: &str) -> Self {
        ListError {
            line,
            problem: Problem::Entry(raw.trim().to_string()),
        }
    }
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            Problem::Entry(text) => write!(f, "line {}: {text:?} is not a valid entry", self.line),
            Problem::NotUtf8 => write!(f, "line {}: not UTF-8 text", self.line),
        }
    }
}

impl std::error::Error for ListError {}

/// Line numbers a lenient parse reports at most (the count covers them all).
pub const SKIPPED_SHOWN: usize = 5;

/// Lines a lenient parse skipped: how many, and the first line numbers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub count: usize,
    /// The first [`SKIPPED_SHOWN`] of them, 1-based, in file order.
    pub first: Vec<usize>,
}

impl Skipped {
    fn add(&mut self, line: usize) {
        self.count += 1;
        if self.first.len() < SKIPPED_SHOWN {
            self.first.push(line);
        }
    }
}

/// The lines of a list file's bytes, numbered as an editor numbers them: split
/// at `\n` only (a `\r` before it goes with the line's other white space), a
/// UTF-8 byte-order mark at the start ignored. Data that is not UTF-8 is an
/// error naming the line of its first bad byte, whatever comes before it.
pub fn text_lines(data: &[u8]) -> Result<std::str::Split<'_, char>, ListError> {
    let data = data.strip_prefix(b"\xef\xbb\xbf").unwrap_or(data);
    match std::str::from_utf8(data) {
        Ok(text) => Ok(text.split('\n')),
        Err(e) => Err(ListError {
            line: line_count(&data[..e.valid_up_to()]) + 1,
            problem: Problem::NotUtf8,
        }),
    }
}

/// Number of `\n` in `data`.
pub(crate) fn line_count(data: &[u8]) -> usize {
    data.iter().filter(|b| **b == b'\n').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_at_newlines_only_and_keep_their_numbers() {
        let lines: Vec<&str> = text_lines(b"\xef\xbb\xbfa\r\n\nb\x0bc\n")
            .unwrap()
            .collect();
        assert_eq!(lines, ["a\r", "", "b\x0bc", ""]);
    }

    #[test]
    fn not_utf8_names_the_line_of_the_first_bad_byte() {
        let err = text_lines(b"ok\nbad host\n\xff\xfe\n\xff").unwrap_err();
        assert_eq!(err.line, 3);
        assert_eq!(err.problem, Problem::NotUtf8);
        assert_eq!(err.to_string(), "line 3: not UTF-8 text");
        // A surrogate encoded in UTF-8 is not UTF-8 either.
        assert_eq!(text_lines(b"\xed\xa0\x80").unwrap_err().line, 1);
    }
}
