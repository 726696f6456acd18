//! Arbitrary bytes, read as a script of packets and timer calls, through
//! `Engine::process`; see `src/harness.rs` for the invariants checked.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    govpass_fuzz::run(data);
});
