#!/usr/bin/env bash
# Builds the eBPF objects from their C sources with Debian 12's clang (the release
# named in clang-major; ci/bpf_objects.sh compares the committed objects with it):
#
#   bash rust/govpass-ebpf/bpf/build.sh          # rewrites the committed objects
#   bash rust/govpass-ebpf/bpf/build.sh OUTDIR   # writes them to OUTDIR instead
#
# The objects are committed (the Rust extension embeds them), so installing
# govpass needs no clang; ci/bpf_objects.sh checks they match their sources.
# The build is reproducible: paths are relative, DWARF is stripped (the BTF,
# with the C line info the verifier quotes, stays), nothing dated is written.
set -euo pipefail
cd "$(dirname "$0")"
out="${1:-.}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
clang="${CLANG:-clang}"
strip="${LLVM_STRIP:-llvm-strip}"
for tool in "$clang" "$strip"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "build.sh: $tool not found (apt-get install clang llvm libbpf-dev)" >&2
        exit 1
    fi
done
if [ ! -f /usr/include/bpf/bpf_helpers.h ]; then
    echo "build.sh: bpf/bpf_helpers.h not found (apt-get install libbpf-dev)" >&2
    exit 1
fi
# <linux/types.h> wants the host's <asm/types.h>, which a bpf target does not search.
multiarch="$("$clang" -print-multiarch 2>/dev/null || true)"
[ -n "$multiarch" ] || multiarch="$(uname -m)-linux-gnu"
for source in *.bpf.c; do
    object="$out/${source%.c}.o"
    "$clang" -O2 -g -target bpf -Wall -Werror \
        -I"/usr/include/$multiarch" \
        -fdebug-prefix-map="$PWD"=. -fno-ident \
        -c "$source" -o "$object.tmp"
    "$strip" --strip-debug "$object.tmp"
    mv "$object.tmp" "$object"
done
