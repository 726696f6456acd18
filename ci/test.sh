#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian machine of this kind and
# runs all of them: Rust (unit, property, fuzz-harness), lints, type and stub checks,
# Python (unit, property, pcap, rules, lab and end-to-end in network
# namespaces), the Windows tier (ci/windows.sh), and a bounded fuzz pass. Run as root. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
PYTHON="${PYTHON:-python3}"

step() { printf '\n== %s ==\n' "$*"; }

step "system packages (apt) and lab tools"
bash ci/lab-deps.sh

step "build and install govpass with test extras"
"$PYTHON" -m pip install -q -e '.[test]'

step "rust: fmt, clippy, tests"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --quiet

step "python: ruff, types, stubs"
"$PYTHON" -m ruff check python tests ci
"$PYTHON" -m ruff format --check python tests ci
"$PYTHON" -m mypy
"$PYTHON" -m mypy.stubtest govpass._core

step "python: pytest (unit, properties, pcap, rules, lab, end-to-end)"
"$PYTHON" -m pytest -q -p no:cacheprovider tests

step "windows: cross-built wheel in Windows CPython under wine (ci/windows.sh)"
bash ci/windows.sh

step "fuzz: bounded pass"
FUZZ_INSTALL=1 FUZZ_REQUIRED=1 bash ci/fuzz.sh "${FUZZ_SECONDS:-60}"

step "all tests passed"
