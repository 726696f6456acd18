//! Errors of the core. Only configuration can be wrong: packets never cause an
//! error, they cause a fail-open.

use std::fmt;

/// A configuration value outside what the engine accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Name of the field as users spell it (`split-chunk`, `max-buffer`, ...).
    pub field: &'static str,
    /// The value that was given, as text.
    pub got: String,
    /// What would have been accepted, e.g. `an integer in 1..=4096`.
    pub accepted: String,
}

impl ConfigError {
    pub fn new(field: &'static str, got: impl fmt::Display, accepted: impl Into<String>) -> Self {
        ConfigError {
            field,
            got: got.to_string(),
            accepted: accepted.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {}: {} (accepted: {})",
            self.field, self.got, self.accepted
        )
    }
}

impl std::error::Error for ConfigError {}
