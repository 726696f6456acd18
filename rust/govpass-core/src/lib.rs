//! The sans-I/O engine of govpass.
//!
//! Bytes of captured IP packets and a timestamp go in; a list of [`Action`]s
//! comes out: release held packets unmodified, drop them, or send new
//! segments. There are no sockets, clocks, threads or logging in this crate,
//! so everything here is testable with byte fixtures.

pub mod checksum;
pub mod config;
pub mod engine;
pub mod error;
pub mod flow;
pub mod packet;
pub mod plan;
pub mod quic;
pub mod reassembly;
pub mod segment;
pub mod seq;
pub mod stats;
pub mod stepped_map;
pub mod targeting;
pub mod tls;

pub use config::{EngineConfig, SplitMode, SplitPos};
pub use engine::{Action, Engine};
pub use error::ConfigError;
pub use stats::{FailReason, Stats};
