//! govpass's eBPF programs: C sources under `bpf/`, built by clang into the
//! objects committed beside them (`bpf/build.sh`; `ci/bpf_objects.sh` checks
//! they match), embedded here and loaded with aya. What to load when, and why
//! not, is decided in Python (`govpass.bpf`, `govpass.rules`); this crate only
//! loads what it is asked to and says exactly what failed.
#![cfg(target_os = "linux")]

mod error;
pub mod ksplit;
mod object;
pub mod prefilter;

pub use error::LoadError;
