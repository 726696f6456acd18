#!/usr/bin/env bash
# The README's two commands on a fresh Debian, as a new user runs them (as root).
#
#   1. A minimal Debian tree (debootstrap --variant=minbase $GOVPASS_FRESH_SUITE, default
#      bookworm, i.e. Debian 12; trixie is Debian 13), from the mirror in this machine's
#      apt sources, cached as a tarball in $GOVPASS_CI_CACHE (default
#      /var/cache/govpass-ci; delete it to start from the mirror again).
#   2. This checkout's files (what git tracks or would track: no target/, no .venv)
#      copied to /root/govpass in a fresh copy of the tree.
#   3. The README's first command, read from README.md: its install part in the chroot,
#      then its `govpass run` in a private network namespace with one veth pair,
#      stopped with SIGINT after a few seconds; it must have logged that it runs and
#      must leave no rules.
#   4. The README's service section: its install lines, `systemd-analyze verify` of the
#      unit, then the unit's ExecStart as its user would run it (uid 65534 with the
#      unit's capabilities, setpriv), SIGTERM, and ExecStopPost; no rules left.
#   5. The README's second command with GOVPASS_TEST_TIERS=light (the network-namespace
#      tiers run on the host in the same CI job; twice would double its time).
#
# Downloaded .deb files and crates are kept in the cache between runs (the packages
# are still installed and the crates compiled every time). Every mount, the namespace
# and the tree are removed on every exit path.
set -euo pipefail
cd "$(dirname "$0")/.."
src="$PWD"
cache="${GOVPASS_CI_CACHE:-/var/cache/govpass-ci}"
suite="${GOVPASS_FRESH_SUITE:-bookworm}"
case "$suite" in
    bookworm | trixie) ;;
    *) printf 'fresh-debian: GOVPASS_FRESH_SUITE must be bookworm or trixie, not %q\n' "$suite" >&2
       exit 2 ;;
esac
base_tar="$cache/$suite-minbase.tar.gz"
run_secs="${GOVPASS_FRESH_RUN_SECONDS:-8}"
say() { printf 'fresh-debian: %s\n' "$*"; }
die() { printf 'fresh-debian: FAIL: %s\n' "$*" >&2; exit 1; }
now() { date +%s; }
t0="$(now)"

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot, network namespaces)"
command -v debootstrap >/dev/null 2>&1 || {
    say "apt-get install debootstrap"
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends debootstrap \
        >/dev/null
}

# The README's first two ```sh blocks, each one command line.
readme_command() {
    awk -v want="$1" '
        /^```sh$/ { inside = 1; n++; next }
        /^```/ { inside = 0; next }
        inside && n == want { print }' README.md
}
first="$(readme_command 1)"
second="$(readme_command 2)"
[ "$(printf '%s\n' "$first" | wc -l)" -eq 1 ] && [ -n "$first" ] \
    || die "README.md's first sh block is not one command: $first"
[ "$(printf '%s\n' "$second" | wc -l)" -eq 1 ] && [ -n "$second" ] \
    || die "README.md's second sh block is not one command: $second"
daemon_part="govpass run"
install_part="${first% && "$daemon_part"}"
[ "$install_part" != "$first" ] \
    || die "README.md's first command does not end in '&& $daemon_part': $first"
say "README command 1: $first"
say "README command 2: $second"

# The Debian mirror this machine uses (deb822 sources, else sources.list).
mirror="$(awk '/^URIs:/ { u = $2 } /^Suites:/ && / bookworm( |$)/ { print u; exit }' \
    /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
[ -n "$mirror" ] || mirror="$(awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' \
    /etc/apt/sources.list 2>/dev/null || true)"
mirror="${mirror:-http://deb.debian.org/debian}"

work="$(mktemp -d /var/tmp/govpass-fresh.XXXXXX)"
root="$work/root"
ns="gpfd$$r$RANDOM"
mounted=()
cleanup() {
    local rc=$? i m
    if ip netns list 2>/dev/null | grep -qw "$ns"; then
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    fi
    # Ours in reverse order, then any made inside the tree (ip netns mounts /run/netns).
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}" 2>/dev/null || true
    done
    for m in $(awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    if grep -q " $work/" /proc/mounts; then
        echo "fresh-debian: mounts left under $work, not removing it" >&2
        rc=1
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
bind() { # bind SRC DST: a mount undone by cleanup
    mkdir -p "$2"
    mount --bind "$1" "$2"
    mounted+=("$2")
}

mkdir -p "$cache/apt-archives/partial" "$cache/cargo-registry"
if [ ! -s "$base_tar" ]; then
    say "debootstrap --variant=minbase $suite from $mirror (cold cache)"
    t="$(now)"
    debootstrap --variant=minbase "$suite" "$work/base" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    tar -C "$work/base" -czf "$base_tar.tmp" . && mv "$base_tar.tmp" "$base_tar"
    rm -rf "$work/base"
    say "base tree made and cached in $(($(now) - t)) s"
fi
mkdir "$root"
tar -C "$root" -xzf "$base_tar"
# A mount point, as / is on a real machine (ip netns exec re-mounts / as a slave).
mount --bind "$root" "$root" && mounted+=("$root")
say "fresh tree from $base_tar"

mkdir -p "$root/root/govpass"
git ls-files -z --cached --others --exclude-standard \
    | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -C "$root/root/govpass" -xf -
cp /etc/resolv.conf "$root/etc/resolv.conf"
# This network's own certificate authorities (a TLS-inspecting proxy, say), as any
# machine on it has them: ca-certificates adds them to the system store when apt
# installs it, and pip, which has its own store, is pointed at that one.
pip_cert=()
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    pip_cert=(PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
fi
# Packages that ship services must not try to start them in a chroot.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"

mount -t proc proc "$root/proc" && mounted+=("$root/proc")
mount -t sysfs sysfs "$root/sys" && mounted+=("$root/sys")
bind /dev "$root/dev"
bind /dev/pts "$root/dev/pts"
bind "$cache/apt-archives" "$root/var/cache/apt/archives"
bind "$cache/cargo-registry" "$root/root/.cargo/registry"
# The tree has no kernel: load the modules the rules need from the host's.
modprobe -a nfnetlink_queue xt_NFQUEUE nft_queue xt_u32 xt_connmark xt_mark xt_bpf \
    nf_conntrack 2>/dev/null || true

# A fresh login environment: nothing of this machine's pyenv, rustup or pip settings,
# except the Rust release: the tree gets the one CI lints with here, so that clippy's
# verdict does not change with each new stable release (a user gets the latest).
rust_release="$(rustc --version 2>/dev/null | awk '{print $2}')" || true
in_tree() {
    chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb CI="${CI:-}" \
        GOVPASS_RUST_TOOLCHAIN="${rust_release:-stable}" "${pip_cert[@]}" PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}
# In the private namespace: its own /sys, so the daemon sees only the veth pair and lo;
# and as from a terminal, SIGINT at its default disposition whatever this script's caller
# left it at (a shell's background job inherits it ignored).
in_netns() {
    python3 -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execvp(sys.argv[1], sys.argv[1:])' ip netns exec "$ns" sh -c 'mount -t sysfs sysfs "$0/sys" && exec chroot "$0" "$@"' \
        "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}
no_rules_left() { # no_rules_left WHAT
    local dump tool
    dump="$(for tool in iptables-save ip6tables-save iptables-legacy-save ip6tables-legacy-save \
        iptables-nft-save ip6tables-nft-save; do
        command -v "$tool" >/dev/null && ip netns exec "$ns" "$tool" 2>/dev/null
    done; command -v nft >/dev/null && ip netns exec "$ns" nft list ruleset)" || true
    if grep -i govpass <<<"$dump"; then die "govpass rules left after $1"; fi
}

say "command 1, install part: $install_part"
t="$(now)"
in_tree bash -c "cd /root/govpass && $install_part" || die "command 1's install part failed"
t_install=$(($(now) - t))
say "install part passed in $t_install s"

ip netns add "$ns"
ip link add gpfd0 netns "$ns" type veth peer name gpfd1 netns "$ns"
ip -n "$ns" addr add 198.51.100.1/24 dev gpfd0
ip -n "$ns" addr add 198.51.100.2/24 dev gpfd1
for dev in lo gpfd0 gpfd1; do ip -n "$ns" link set "$dev" up; done

say "command 1, daemon part: $daemon_part (SIGINT after $run_secs s, private netns)"
# timeout delivers SIGINT and passes on govpass's exit status.
set +e
in_netns bash -c "cd /root/govpass && timeout --preserve-status -s INT -k 15 $run_secs \
    $daemon_part" >"$work/run.log" 2>&1
rc=$?
set -e
cat "$work/run.log"
grep -q "running:" "$work/run.log" || die "govpass run did not log that it runs"
grep -q "rules removed" "$work/run.log" || die "govpass run did not remove its rules on SIGINT"
[ "$rc" -eq 0 ] || die "govpass run exited $rc on SIGINT"
no_rules_left "SIGINT"
say "daemon part passed: started, stopped on SIGINT, no rules left"

say "service: the README's install lines, systemd-analyze verify, the unit's user"
in_tree apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends systemd \
    >/dev/null
service_lines="$(awk '/^## Running as a service/ { s = 1 } s && /^```sh$/ { c = 1; next }
    c && /^```/ { exit } c { print }' README.md)"
[ -n "$service_lines" ] || die "README.md has no sh block under 'Running as a service'"
while IFS= read -r line; do
    case "$line" in
        systemctl\ daemon-reload*) # no systemd running in a chroot: enable offline
            in_tree systemctl enable govpass || die "systemctl enable govpass failed" ;;
        *) in_tree bash -c "cd /root/govpass && $line" || die "service install line failed: $line" ;;
    esac
done <<<"$service_lines"
unit=/etc/systemd/system/govpass.service
in_tree systemd-analyze verify "$unit" || die "systemd-analyze verify $unit failed"
setting() { sed -n "s/^$1=//p" "$root$unit"; }
caps="$(setting AmbientCapabilities | tr 'A-Z' 'a-z' | sed 's/cap_/+/g; s/ /,/g')"
start="$(setting ExecStart)"
stop_post="$(setting ExecStopPost)"
[ -n "$caps" ] && [ -n "$start" ] && [ -n "$stop_post" ] || die "the unit lacks a setting"
run_dir="$(setting Environment | sed -n 's/^GOVPASS_RUN_DIR=//p')"
# As systemd's RuntimeDirectory=: made afresh for the unit's user at start (the
# first command's daemon, run as root above, left its own 0640 lock file there).
rm -rf "${root:?}$run_dir"
install -d -o 65534 -g 65534 -m 700 "$root$run_dir"
as_unit=(setpriv --reuid=65534 --regid=65534 --clear-groups --no-new-privs
         "--bounding-set=-all,$caps" "--inh-caps=-all,$caps" "--ambient-caps=-all,$caps" --)
set +e
in_netns env GOVPASS_RUN_DIR="$run_dir" "${as_unit[@]}" timeout --preserve-status -s TERM \
    -k 15 "$run_secs" $start >"$work/service.log" 2>&1
rc=$?
in_netns env GOVPASS_RUN_DIR="$run_dir" "${as_unit[@]}" $stop_post >>"$work/service.log" 2>&1
rc_post=$?
set -e
cat "$work/service.log"
grep -q "running:" "$work/service.log" || die "the unit's ExecStart did not run as its user"
[ "$rc" -eq 0 ] || die "the unit's ExecStart exited $rc on SIGTERM"
[ "$rc_post" -eq 0 ] || die "the unit's ExecStopPost exited $rc_post"
no_rules_left "the service's stop"
say "service passed: verified, ran as uid 65534 with $caps, stopped, no rules left"

say "command 2 (GOVPASS_TEST_TIERS=light): $second"
t="$(now)"
in_tree GOVPASS_TEST_TIERS=light bash -c "cd /root/govpass && $second" \
    || die "command 2 failed"
say "command 2 passed in $(($(now) - t)) s"
say "all passed in $(($(now) - t0)) s (install part $t_install s)"
