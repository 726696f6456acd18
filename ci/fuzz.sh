#!/usr/bin/env bash
# Bounded cargo-fuzz pass over the core (rust/fuzz): target `process` (the
# engine) and target `quic_initial` (the QUIC Initial reading), one after the
# other, SECONDS each.
#
#   ci/fuzz.sh [SECONDS]          default 60; FUZZ_TIME overrides too
#   FUZZ_TARGETS=quic_initial ci/fuzz.sh   only the targets named
#   FUZZ_INSTALL=1 ci/fuzz.sh      installs cargo-fuzz first when missing
#   FUZZ_REQUIRED=1 ci/fuzz.sh     fails (instead of skipping) when it cannot run
#
# Exits 0 when the pass finds nothing, non-zero when libFuzzer reports a
# crash (the input is then in rust/fuzz/artifacts/TARGET/), and 0 with a
# clear message when cargo-fuzz cannot run here. The stable-Rust
# equivalent that always runs is
#   cargo test -p govpass-core --test fuzz_process
# (the same harness over random and structured inputs, and the seeds); for
# the QUIC reading, the property tests in rust/govpass-core/src/quic/tests.rs.
#
# Only a stable toolchain exists on our machines: cargo-fuzz's -Z flags are
# allowed there through RUSTC_BOOTSTRAP=1 (set below, for this build only).
set -euo pipefail

cd "$(dirname "$0")/.."
secs="${1:-${FUZZ_TIME:-60}}"
fuzz_dir=rust/fuzz
targets="${FUZZ_TARGETS:-process quic_initial}"

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
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

fuzz_one() {
    local target="$1" corpus="$fuzz_dir/corpus/$1" seeds="$fuzz_dir/seeds/$1" san=()
    mkdir -p "$corpus" "$fuzz_dir/artifacts/$target"

    echo "fuzz.sh: building $target ($(cargo fuzz --version))"
    if ! cargo fuzz build --fuzz-dir "$fuzz_dir" "$target"; then
        # A toolchain without the sanitizer runtime: retry without ASan. The
        # harness's own checks (and Rust's bounds checks) still apply.
        echo "fuzz.sh: build with AddressSanitizer failed; retrying with --sanitizer none" >&2
        san=(--sanitizer none)
        cargo fuzz build --fuzz-dir "$fuzz_dir" "${san[@]}" "$target"
    fi

    echo "fuzz.sh: fuzzing $target for ${secs}s"
    set +e
    cargo fuzz run --fuzz-dir "$fuzz_dir" "${san[@]}" "$target" "$corpus" "$seeds" -- \
        -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 2>&1 | tee "$log"
    local status=${PIPESTATUS[0]}
    set -e

    local execs
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    echo "fuzz.sh: $target: exit status $status, executions ${execs:-unknown}, corpus $(find "$corpus" -type f | wc -l) inputs"
    if [ "$status" -ne 0 ]; then
        echo "fuzz.sh: CRASH FOUND in $target: see $fuzz_dir/artifacts/$target/ and the log above" >&2
        exit "$status"
    fi
    echo "fuzz.sh: $target: no crash"
}

for target in $targets; do
    fuzz_one "$target"
done
