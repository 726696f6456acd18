#!/usr/bin/env bash
# Checks that the committed eBPF objects (rust/govpass-ebpf/bpf/*.bpf.o) are what
# their C sources build to: builds them twice, in two directories, with
# rust/govpass-ebpf/bpf/build.sh, and fails when the two builds differ (the build
# is not reproducible) or differ from the committed objects (a source changed
# without its object, or the other way round). Another clang release makes other
# bytes: the committed objects are compared only with the release named in
# rust/govpass-ebpf/bpf/clang-major (Debian 12's); with any other the sources must
# still build warning-free and reproducibly. Installs Debian's clang, llvm and
# libbpf-dev when they are missing and this runs as root.
#
#   bash ci/bpf_objects.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bpf=rust/govpass-ebpf/bpf

if ! command -v clang >/dev/null 2>&1 || ! command -v llvm-strip >/dev/null 2>&1 \
    || [ ! -f /usr/include/bpf/bpf_helpers.h ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bpf_objects: clang, llvm and libbpf-dev are missing (run as root to install them)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
        clang llvm libbpf-dev >/dev/null
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The second build runs from a copy elsewhere: no path of the checkout may leak in.
cp -r "$bpf" "$work/src"
rm -f "$work"/src/*.o
bash "$bpf/build.sh" "$work/a"
bash "$work/src/build.sh" "$work/b"

pinned="$(cat "$bpf/clang-major")"
major="$(clang -dumpversion | cut -d. -f1)"
compare=1
if [ "$major" != "$pinned" ]; then
    compare=0
    echo "bpf_objects: clang $major here, the objects are built with clang $pinned:" \
        "checking the sources build, not comparing bytes with the committed objects"
fi

status=0
for source in "$bpf"/*.bpf.c; do
    name="$(basename "${source%.c}").o"
    if ! cmp -s "$work/a/$name" "$work/b/$name"; then
        echo "bpf_objects: two builds of $name differ: the build is not reproducible" >&2
        status=1
    elif [ "$compare" -eq 1 ] && ! cmp -s "$work/a/$name" "$bpf/$name"; then
        echo "bpf_objects: $bpf/$name is not what $source builds to with" \
            "$(clang --version | head -n 1); run: bash $bpf/build.sh" >&2
        status=1
    fi
done
for object in "$bpf"/*.o; do
    [ -e "$object" ] || continue
    if [ ! -f "${object%.o}.c" ]; then
        echo "bpf_objects: $object has no source ${object%.o}.c" >&2
        status=1
    fi
done
if [ "$status" -eq 0 ] && [ "$compare" -eq 1 ]; then
    echo "bpf_objects: $(find "$bpf" -name '*.bpf.o' | wc -l) object(s) match their sources"
fi
exit "$status"
