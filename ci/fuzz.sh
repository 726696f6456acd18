#!/usr/bin/env bash
# Bounded cargo-fuzz pass over the engine (target `process`, rust/fuzz).
#
#   ci/fuzz.sh [SECONDS]          default 60; FUZZ_TIME overrides too
#   FUZZ_INSTALL=1 ci/fuzz.sh      installs cargo-fuzz first when missing
#   FUZZ_REQUIRED=1 ci/fuzz.sh     fails (instead of skipping) when it cannot run
#
# Exits 0 when the pass finds nothing, non-zero when libFuzzer reports a
# crash (the input is then in rust/fuzz/artifacts/process/), and 0 with a
# clear message when cargo-fuzz cannot run here. The stable-Rust
# equivalent that always runs is
#   cargo test -p govpass-core --test fuzz_process
# (the same harness over random and structured inputs, and the seeds).
#
# Only a stable toolchain exists on our machines: cargo-fuzz's -Z flags are
# allowed there through RUSTC_BOOTSTRAP=1 (set below, for this build only).
set -euo pipefail

cd "$(dirname "$0")/.."
secs="${1:-${FUZZ_TIME:-60}}"
fuzz_dir=rust/fuzz
target=process

if ! cargo fuzz --version >/dev/null 2>&1 && [ "${FUZZ_INSTALL:-0}" = 1 ]; then
    echo "fuzz.sh: installing cargo-fuzz (FUZZ_INSTALL=1)"
    cargo install cargo-fuzz --locked || true
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is not installed; skipping the libFuzzer pass." >&2
    echo "fuzz.sh: install it with 'cargo install cargo-fuzz', or run the stable" >&2
    echo "fuzz.sh: equivalent: cargo test -p govpass-core --test fuzz_process" >&2
    [ "${FUZZ_REQUIRED:-0}" = 1 ] && exit 1
    exit 0
fi
if ! command -v c++ >/dev/null 2>&1; then
    echo "fuzz.sh: no C++ compiler (libFuzzer is built from source); skipping." >&2
    [ "${FUZZ_REQUIRED:-0}" = 1 ] && exit 1
    exit 0
fi

export RUSTC_BOOTSTRAP=1
corpus="$fuzz_dir/corpus/$target"
seeds="$fuzz_dir/seeds/$target"
mkdir -p "$corpus" "$fuzz_dir/artifacts/$target"

echo "fuzz.sh: building $target ($(cargo fuzz --version))"
if ! cargo fuzz build --fuzz-dir "$fuzz_dir" "$target"; then
    # A toolchain without the sanitizer runtime: retry without ASan. The
    # harness's own checks (and Rust's bounds checks) still apply.
    echo "fuzz.sh: build with AddressSanitizer failed; retrying with --sanitizer none" >&2
    san=(--sanitizer none)
    cargo fuzz build --fuzz-dir "$fuzz_dir" "${san[@]}" "$target"
else
    san=()
fi

echo "fuzz.sh: fuzzing $target for ${secs}s"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo fuzz run --fuzz-dir "$fuzz_dir" "${san[@]}" "$target" "$corpus" "$seeds" -- \
    -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
echo "fuzz.sh: exit status $status, executions ${execs:-unknown}, corpus $(find "$corpus" -type f | wc -l) inputs"
if [ "$status" -ne 0 ]; then
    echo "fuzz.sh: CRASH FOUND: see $fuzz_dir/artifacts/$target/ and the log above" >&2
    exit "$status"
fi
echo "fuzz.sh: no crash"
