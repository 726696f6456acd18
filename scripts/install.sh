#!/usr/bin/env bash
# Install govpass from this checkout on Debian/Ubuntu (as root):
#   apt packages to build it (a C compiler and Python headers for netfilterqueue, which
#   ships only as source), a Rust toolchain when none new enough is on PATH (rustup,
#   minimal profile, ~700 MB in /root/.rustup and /root/.cargo), a virtual environment
#   /opt/govpass (Debian's Python refuses system-wide pip installs, PEP 668), and the
#   command /usr/local/bin/govpass (what scripts/govpass.service runs).
#
#   bash scripts/install.sh          # all of the above; again to upgrade from the checkout
#   bash scripts/install.sh --deps   # only the system packages and Rust (ci/test.sh)
#
# GOVPASS_PREFIX (default /opt/govpass) moves the environment; GOVPASS_BIN (default
# /usr/local/bin) the command's link; GOVPASS_RUST_TOOLCHAIN (default stable) is the
# toolchain rustup installs when there is no Rust (e.g. 1.95.0).
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022 # the service's dynamic user must be able to read the environment

prefix="${GOVPASS_PREFIX:-/opt/govpass}"
bindir="${GOVPASS_BIN:-/usr/local/bin}"
docdir=/usr/local/share/doc/govpass
mode=all
case "${1:-}" in
    "") ;;
    --deps) mode=deps ;;
    *) echo "install.sh: unknown option '$1' (accepted: --deps)" >&2; exit 2 ;;
esac
say() { printf 'install: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (it installs apt packages and writes $prefix)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install.sh: needs apt-get (Debian or Ubuntu); elsewhere install the packages" \
        "named in README.md by hand and run: pip install ." >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
pkgs=(python3 python3-venv python3-dev build-essential pkg-config libnetfilter-queue-dev
      iptables kmod ca-certificates curl)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" \
        >/dev/null
fi

# Rust: the crates need rust-version from Cargo.toml (Debian 12's rustc is 1.63, too
# old). Without cargo on PATH, maturin would fetch rustup and a toolchain into
# ~/.cache/puccinialin, said only under pip -v: install one explicitly, visibly.
toolchain="${GOVPASS_RUST_TOOLCHAIN:-stable}"
need_rust="$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml)"
export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH" MATURIN_NO_INSTALL_RUST=1
rust_ok() {
    local have
    have="$(rustc --version 2>/dev/null | awk '{print $2}')" || return 1
    [ -n "$have" ] && command -v cargo >/dev/null 2>&1 \
        && [ "$(printf '%s\n%s\n' "$need_rust" "$have" | sort -V | head -1)" = "$need_rust" ]
}
if ! rust_ok; then
    if command -v rustup >/dev/null 2>&1; then
        say "rustup toolchain install $toolchain (rustc >= $need_rust needed)"
        rustup toolchain install "$toolchain" --profile minimal
        rustup default "$toolchain"
    else
        arch="$(uname -m)-unknown-linux-gnu"
        url="https://static.rust-lang.org/rustup/dist/$arch/rustup-init"
        say "Rust >= $need_rust not found: installing rustup (minimal profile) from $url"
        tmp="$(mktemp -d)"
        trap 'rm -rf "$tmp"' EXIT
        curl --proto '=https' --tlsv1.2 -fsS -o "$tmp/rustup-init" "$url"
        curl --proto '=https' --tlsv1.2 -fsS -o "$tmp/rustup-init.sha256" "$url.sha256"
        want="$(awk '{print $1}' "$tmp/rustup-init.sha256")"
        got="$(sha256sum "$tmp/rustup-init" | awk '{print $1}')"
        if [ "$want" != "$got" ]; then
            echo "install.sh: rustup-init checksum mismatch ($got, expected $want)" >&2
            exit 1
        fi
        chmod +x "$tmp/rustup-init"
        "$tmp/rustup-init" -y -q --profile minimal --default-toolchain "$toolchain" \
            --no-modify-path
    fi
    rust_ok || { echo "install.sh: no usable Rust >= $need_rust after installing" >&2; exit 1; }
fi
say "$(rustc --version)"
[ "$mode" = deps ] && exit 0

if [ ! -x "$prefix/bin/python" ]; then
    say "python3 -m venv $prefix"
    python3 -m venv "$prefix"
fi
say "pip install . into $prefix (builds the Rust extension, a few minutes)"
PIP_DISABLE_PIP_VERSION_CHECK=1 "$prefix/bin/python" -m pip install -q .
mkdir -p "$bindir"
ln -sfn "$prefix/bin/govpass" "$bindir/govpass"
install -D -m 644 README.md "$docdir/README.md"
"$bindir/govpass" --help >/dev/null
say "installed $bindir/govpass -> $prefix/bin/govpass"
