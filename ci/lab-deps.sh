#!/usr/bin/env bash
# Install what the network-namespace lab (python/govpass/lab, tests/lab) needs on a
# Debian 12 machine. Idempotent and non-interactive; run as root.
#
#   LAB_CHROMIUM=0 ci/lab-deps.sh   # skip the (large) chromium package
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
PYTHON="${PYTHON:-python3}"
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

if [ "$(id -u)" -ne 0 ]; then
    echo "lab-deps: must run as root (apt-get and netns need it)" >&2
    exit 1
fi

apt_pkgs=(iproute2 iptables nftables conntrack tcpdump tshark ethtool openssl curl
          libnetfilter-queue-dev build-essential python3-dev util-linux)
# The lab benchmark (ci/bench_lab.py) also needs a fast TLS server and load generator.
if [ "${LAB_BENCH:-0}" = "1" ]; then
    apt_pkgs+=(wrk nginx-light)
fi

# Other jobs on the machine may hold the dpkg/apt locks: wait for them, then retry.
apt_get() {
    local try
    for try in 1 2 3 4 5; do
        if apt-get -o DPkg::Lock::Timeout=300 "$@"; then
            return 0
        fi
        echo "lab-deps: apt-get $1 failed (try $try), retrying" >&2
        sleep 10
    done
    return 1
}

missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "lab-deps: apt-get install ${missing[*]}"
    apt_get update -qq
    # tshark asks whether non-root users may capture; answer for it.
    echo "wireshark-common wireshark-common/install-setuid boolean false" \
        | debconf-set-selections
    apt_get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Chromium is optional for the lab (its client tests run only where it exists), so a
# slow or failing install must not fail the whole script. ~20 s on a Debian 12 mirror.
if [ "${LAB_CHROMIUM:-1}" = "1" ] && ! command -v chromium >/dev/null 2>&1; then
    echo "lab-deps: apt-get install chromium"
    [ "${#missing[@]}" -gt 0 ] || apt_get update -qq
    timeout 900 apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
        chromium >/dev/null || echo "lab-deps: chromium not installed; its lab tests skip it" >&2
fi

# netfilterqueue builds a C extension against libnetfilter-queue-dev.
if "$PYTHON" "$(dirname "$0")/externally_managed.py"; then
    echo "lab-deps: $PYTHON is externally managed (PEP 668) and pip may not install into" \
        "it; set PYTHON to a virtual environment's python (ci/test.sh uses .venv)" >&2
    exit 1
fi
py_missing=()
"$PYTHON" -c "import netfilterqueue" 2>/dev/null || py_missing+=("netfilterqueue>=1.1")
"$PYTHON" -c "import dpkt" 2>/dev/null || py_missing+=("dpkt>=1.9")
if [ "${#py_missing[@]}" -gt 0 ]; then
    echo "lab-deps: pip install ${py_missing[*]}"
    "$PYTHON" -m pip install -q "${py_missing[@]}"
fi

# Report what the lab will find.
for tool in ip iptables ip6tables tcpdump tshark ethtool openssl curl chromium; do
    if command -v "$tool" >/dev/null 2>&1; then
        printf 'lab-deps: %-10s %s\n' "$tool" "$(command -v "$tool")"
    else
        printf 'lab-deps: %-10s MISSING\n' "$tool"
    fi
done
"$PYTHON" -c "import netfilterqueue, dpkt; print('lab-deps: python netfilterqueue, dpkt ok')"
