#!/usr/bin/env bash
# Builds the abi3 wheel for this machine with maturin, installs it into a fresh
# venv, runs the unit tests that need neither root nor network namespaces
# against the installed wheel from outside the source tree, and prints the
# wheel's path. Linux, FreeBSD, and Windows (Git Bash, with WHEEL=...).
#
#   OUT=dist                 where the wheel goes
#   PYTHON=python3           interpreter for the build tools and the test venv (>= 3.10)
#   ZIG=1                    Linux: link with zig against glibc 2.17 (pip's ziglang), so
#                            the wheel is manylinux2014 even when built on a new glibc;
#                            ZIG=0 builds with the host linker and takes the tag the
#                            host's glibc allows (manylinux_2_34 on Debian 12)
#   MANYLINUX=manylinux2014  the tag to build for with ZIG=1
#   TESTS="..."              test paths relative to the source tree (missing ones skipped)
#   WHEEL=path.whl           skip the build and test this wheel (CI builds with maturin-action)
#   CARGO_TARGET_DIR         as usual (point it elsewhere to stay clear of a concurrent build)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-dist}"
ZIG="${ZIG:-1}"
TESTS="${TESTS:-tests/test_engine.py tests/test_engine_properties.py tests/test_config.py \
tests/freebsd tests/rules/test_spec.py tests/rules/test_iptables_plan.py \
tests/rules/test_nftables_plan.py tests/rules/test_manager_unit.py}"

step() { printf '\n== %s ==\n' "$*"; }

case "$(uname -s)" in
    Linux) os=linux ;;
    FreeBSD) os=freebsd ;;
    MINGW* | MSYS* | CYGWIN*) os=windows ;;
    *) os=other ;;
esac
bindir() { if [ "$os" = windows ]; then echo "$1/Scripts"; else echo "$1/bin"; fi; }

work=$(mktemp -d "${TMPDIR:-/tmp}/govpass-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT

if [ -n "${WHEEL:-}" ]; then
    wheel=$WHEEL
else
    step "build tools ($os)"
    "$PYTHON" -m venv "$work/build"
    tools=('maturin>=1.5,<2')
    args=(build --release --out "$OUT")
    if [ "$os" = linux ] && [ "$ZIG" = 1 ]; then
        # Without zig, maturin refuses manylinux2014 on a glibc newer than 2.17:
        # the host's libc gives the extension GLIBC_2.25..2.34 symbol versions.
        tools+=(ziglang)
        args+=(--zig --compatibility "${MANYLINUX:-manylinux2014}")
    fi
    "$(bindir "$work/build")/python" -m pip install -q "${tools[@]}"
    # maturin finds zig as `python3 -m ziglang`, so the build venv goes first.
    PATH="$(bindir "$work/build"):$PATH"
    maturin --version

    step "build"
    maturin "${args[@]}"
    # Newest first: OUT may hold wheels of earlier versions.
    # shellcheck disable=SC2012
    wheel=$(ls -t "$OUT"/govpass-*.whl 2>/dev/null | head -n 1 || true)
    [ -n "$wheel" ] || { echo "no wheel in $OUT" >&2; exit 1; }
fi
wheel="$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")"
case "$wheel" in
    *-abi3-*) ;;
    *) echo "not an abi3 wheel: $wheel" >&2; exit 1 ;;
esac

step "install into a fresh venv"
"$PYTHON" -m venv "$work/venv"
vpy="$(bindir "$work/venv")/python"
"$vpy" -m pip install -q "$wheel" pytest hypothesis scapy

step "unit tests against the installed wheel"
# The tests run from a copy outside the tree, so nothing can import the
# sources (tests/rules/conftest.py puts ../python on sys.path; next to the
# copy there is no such directory).
mkdir -p "$work/run"
cp "$ROOT/pyproject.toml" "$work/run/"
cp -R "$ROOT/tests" "$work/run/tests"
selected=()
for t in $TESTS; do
    if [ -e "$work/run/$t" ]; then selected+=("$t"); else echo "skipping missing $t"; fi
done
cd "$work/run"
"$vpy" - <<'EOF'
import pathlib, govpass, govpass._core
where = pathlib.Path(govpass.__file__).resolve()
assert "site-packages" in where.parts, f"govpass imported from {where}, not the wheel"
print(f"govpass {govpass.__version__} from {where.parent}")
EOF
"$vpy" -m pytest -q -p no:cacheprovider -m "not netns" "${selected[@]}"

step "wheel"
echo "$wheel"
