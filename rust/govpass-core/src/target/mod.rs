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

/// A list line that is neither a comment nor a valid entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListError {
    /// 1-based line number.
    pub line: usize,
    pub text: String,
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}: {:?} is not a valid entry",
            self.line, self.text
        )
    }
}

impl std::error::Error for ListError {}
