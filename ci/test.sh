#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian machine of this kind and
# runs all of them: Rust (unit, property, fuzz-harness), lints, type and stub checks,
# the eBPF objects against their C sources,
# Python (unit, property, pcap, rules, lab and end-to-end in network
# namespaces), the Windows tier (ci/windows.sh), a bounded fuzz pass, and last the
# README's two commands on a fresh Debian 12 (ci/fresh_debian.sh). Run as root. Exits
# non-zero on any failure.
#
#   GOVPASS_TEST_TIERS=light ci/test.sh   # lints, Rust tests, eBPF objects, Python tests outside
#                                         # tests/e2e* and not marked netns; no fuzz,
#                                         # no Windows tier, no fresh Debian
#   GOVPASS_FRESH_DEBIAN=0 ci/test.sh     # everything but the fresh Debian step
#
# Where the system Python is externally managed (PEP 668, Debian 12's python3) the
# tests run from a virtual environment .venv in the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
tiers="${GOVPASS_TEST_TIERS:-full}"
case "$tiers" in
    full | light) ;;
    *) echo "ci/test.sh: GOVPASS_TEST_TIERS must be full or light, not '$tiers'" >&2; exit 2 ;;
esac

step() { printf '\n== %s ==\n' "$*"; }
seconds() { date +%s; }
started="$(seconds)"

step "system packages (apt), Rust and lab tools"
if [ "$tiers" = light ]; then
    export LAB_CHROMIUM=0 # only the network-namespace tests drive a browser
fi
bash scripts/install.sh --deps
export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH" MATURIN_NO_INSTALL_RUST=1
if command -v rustup >/dev/null 2>&1; then
    for component in rustfmt clippy; do
        rustup component list --installed | grep -q "^$component" \
            || rustup component add "$component"
    done
fi
PYTHON="${PYTHON:-python3}"
if "$PYTHON" ci/externally_managed.py; then
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    PYTHON="$PWD/.venv/bin/python"
    echo "ci/test.sh: the system Python is externally managed; testing from .venv"
fi
export PYTHON
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

step "ebpf: committed objects rebuilt from their C sources (ci/bpf_objects.sh)"
bash ci/bpf_objects.sh

if [ "$tiers" = light ]; then
    step "python: pytest, light tiers (outside network namespaces)"
    "$PYTHON" -m pytest -q -p no:cacheprovider -m "not netns" \
        --ignore=tests/e2e --ignore=tests/e2e_targeting tests
    step "light tiers passed in $(($(seconds) - started)) s"
    exit 0
fi

# The three tiers partition the suite by marker (tests/conftest.py marks whole
# end-to-end directories netns), fastest first, each with its own time.
tier() {
    local name="$1" marker="$2" begun
    begun="$(seconds)"
    step "python: pytest, $name (-m \"$marker\")"
    "$PYTHON" -m pytest -q -p no:cacheprovider -m "$marker" tests
    echo "ci/test.sh: $name took $(($(seconds) - begun)) s"
}
tier "unit (no root)" "not netns and not root"
tier "root, no namespaces (bpf loads, chown)" "root and not netns"
tier "end-to-end in network namespaces" "netns"

step "windows: cross-built wheel in Windows CPython under wine (ci/windows.sh)"
bash ci/windows.sh

step "fuzz: bounded pass"
FUZZ_INSTALL=1 FUZZ_REQUIRED=1 bash ci/fuzz.sh "${FUZZ_SECONDS:-60}"

if [ "${GOVPASS_FRESH_DEBIAN:-1}" = 1 ]; then
    step "the README's commands on a fresh Debian 12 (debootstrap)"
    bash ci/fresh_debian.sh
fi

step "all tests passed in $(($(seconds) - started)) s"
