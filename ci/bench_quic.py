#!/usr/bin/env python3
"""QUIC Initial reading (``--block-quic listed``): the Rust core against the
Python code it replaced, in one process.

    python ci/bench_quic.py [--ref main] [--cpu N] [--rounds 5] [--write BENCHMARKS.md]

The old ``python/govpass/quic.py`` is read from git (``git show REF:...``, default
``main``) and loaded as a module of its own next to the new ``govpass.quic``; both
get the same datagrams, and their answers are compared before anything is timed.
Datagrams: the client Initial of RFC 9001 Appendix A.2 (example.com) and a real
client's first Initial built by aioquic (no network; blocked.example, 1200 bytes).

Measured, pinned to one core, best of ``--rounds`` rounds:

1. the SNI of one Initial: old = ``parse_long_header``, ``InitialKeys.derive``,
   ``unprotect_initial``, ``crypto_frames``, ``CryptoStream`` and
   ``client_hello_sni``; new = ``govpass._core.quic_initial_sni``;
2. ``QuicFilter.should_drop_datagram`` for the Initial of a new connection
   (a new flow key each call: decrypt, reassemble, SNI, ask the profiles);
3. the same for a retransmission of a decided connection (header and table only).

``--write`` replaces the ``## QUIC Initial`` section of the Markdown file.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from bench_common import machine, write_section

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

from govpass import _core, quic  # noqa: E402

DST = "198.51.100.7"
BLOCKED = "blocked.example"


def old_module(ref: str) -> ModuleType:
    """`python/govpass/quic.py` of `ref`, imported as `govpass_quic_old`."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{ref}:python/govpass/quic.py"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "govpass_quic_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("govpass_quic_old", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["govpass_quic_old"] = module
    spec.loader.exec_module(module)
    return module


def rfc_initial() -> bytes:
    lines = (ROOT / "tests/fixtures/quic/rfc9001_a2_client_initial.hex").read_text().splitlines()
    return bytes.fromhex("".join(ln for ln in lines if not ln.startswith("#")).replace(" ", ""))


def aioquic_initial(name: str) -> bytes:
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    conn = QuicConnection(
        configuration=QuicConfiguration(is_client=True, server_name=name, alpn_protocols=["h3"])
    )
    conn.connect((DST, 443), now=0.0)
    [(datagram, _addr)] = conn.datagrams_to_send(now=0.0)
    return datagram


def old_sni(old: ModuleType) -> Callable[[bytes], tuple[str, str | None]]:
    def sni(datagram: bytes) -> tuple[str, str | None]:
        header = old.parse_long_header(datagram)
        keys = old.InitialKeys.derive(header.dcid, old.VERSIONS[header.version])
        stream = old.CryptoStream(16384)
        for offset, data in old.crypto_frames(old.unprotect_initial(datagram, header, keys)):
            stream.add(offset, data)
        return _core.client_hello_sni(stream.prefix())

    return sni


def best_rate(fn: Callable[[int], None], n: int, rounds: int) -> float:
    """Calls per second of `fn(i)` for i in range(n), best of `rounds`."""
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        best = max(best, n / (time.perf_counter() - start))
    return best


def listed_choose() -> Callable[[str | None, str, int, int], str]:
    engine = _core.Engine()
    engine.set_profiles(
        [
            _core.Profile("listed", hosts=[_core.HostList([BLOCKED])]),
            _core.Profile("other", action="pass"),
        ]
    )
    return engine.choose  # type: ignore[return-value]


def run(ref: str, rounds: int) -> dict[str, object]:
    old = old_module(ref)
    datagrams = {"RFC 9001 A.2 (example.com)": rfc_initial(), "aioquic": aioquic_initial(BLOCKED)}
    sni_old = old_sni(old)
    rows = []
    for label, d in datagrams.items():
        expected = sni_old(d)
        assert _core.quic_initial_sni(d) == expected, (label, expected)
        assert expected[0] == "found"
        rate_old = best_rate(lambda _i, d=d: sni_old(d), 20_000, rounds)
        rate_new = best_rate(lambda _i, d=d: _core.quic_initial_sni(d), 20_000, rounds)
        rows.append(("sni", label, len(d), rate_old, rate_new))

    d = datagrams["aioquic"]
    new_conn, decided = {}, {}
    for kind, module in (("old", old), ("new", quic)):
        f = module.QuicFilter(listed_choose())
        new_conn[kind] = best_rate(
            lambda i, f=f: f.should_drop_datagram(d, i, DST, 443, 0.0), 20_000, rounds
        )
        assert f.stats()["quic_split_conns"] == 20_000 * rounds  # every call a new connection
        g = module.QuicFilter(listed_choose())
        assert g.should_drop_datagram(d, "x", DST, 443, 0.0) is True
        decided[kind] = best_rate(
            lambda _i, g=g: g.should_drop_datagram(d, "x", DST, 443, 0.0), 100_000, rounds
        )
    rows.append(("filter-new", "aioquic", len(d), new_conn["old"], new_conn["new"]))
    rows.append(("filter-decided", "aioquic", len(d), decided["old"], decided["new"]))
    return {"rows": rows}


def fmt_rate(r: float) -> str:
    return f"{r / 1e3:.1f} k/s" if r < 1e6 else f"{r / 1e6:.2f} M/s"


def markdown(r: dict[str, object], meta: dict[str, str]) -> str:
    what = {
        "sni": "SNI of one Initial, {label}, {size} B",
        "filter-new": "`QuicFilter.should_drop_datagram`, Initial of a new connection ({label})",
        "filter-decided": "`QuicFilter.should_drop_datagram`, retransmission of a decided "
        "connection ({label})",
    }
    lines = [
        "## QUIC Initial",
        "",
        "Reading the SNI of QUIC client Initials for `--block-quic listed`: the Rust core "
        "(`govpass_core::quic` through `govpass._core`) against the Python code it replaced "
        f"(`python/govpass/quic.py` of `{meta['ref']}`, loaded from git into the same process), "
        "same datagrams, answers compared before timing; one core, best of "
        f"{meta['rounds']} rounds.",
        "",
        "Command (`--write` rewrites this section):",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"Machine: {meta['cpu']}, {meta['cpus']} CPUs (pinned to CPU {meta['pin']}), kernel "
        f"{meta['kernel']}, Python {meta['python']}; release build. Commit {meta['commit']} "
        f"(old code: {meta['ref']} = {meta['ref_commit']}). Date: {meta['date']}.",
        "",
        "| measure | Python (old) | Rust (new) | speed-up | per call old / new |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, label, size, old, new in r["rows"]:  # type: ignore[attr-defined]
        lines.append(
            f"| {what[kind].format(label=label, size=size)} | {fmt_rate(old)} | "
            f"{fmt_rate(new)} | x{new / old:.1f} | {1e6 / old:.1f} / {1e6 / new:.1f} us |"
        )
    lines += [
        "",
        "Reading the figures:",
        "",
        "- The old SNI path is the Python code's own steps (HMAC-SHA256 key derivation, "
        "`cryptography`'s AES-ECB and AES-GCM, the frame walk, the reassembly) followed by the "
        "same `client_hello_sni`; the new one is one call into the core, which derives the "
        "keys, removes both protections, walks the frames, reassembles them and reads the "
        "name.",
        "- A new connection adds the filter's table insert, the `CryptoStream` and "
        "`Engine.choose` on both sides (one decision per call here: a new flow key each "
        "time, 1024 connections kept, the oldest evicted).",
        "- A decided connection's retransmission is not decrypted by either: the difference "
        "is the long-header parse (Python `struct` against one call into the core).",
        f"- Load average {meta['load']} at the start; this is a shared virtual machine, so "
        "rates of single runs vary by up to ~2x; the ratios vary less.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--ref", default="main", help="git revision of the old quic.py")
    ap.add_argument("--cpu", type=int, default=None, help="core to pin to (default: the last)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--write", type=Path, help="Markdown file whose '## QUIC Initial' to write")
    args = ap.parse_args()
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    load = os.getloadavg()[0]
    result = run(args.ref, args.rounds)

    def git(*a: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *a], capture_output=True, text=True, check=True
        ).stdout.strip()

    dirty = " (uncommitted changes)" if git("status", "--porcelain", "--", "python", "rust") else ""
    meta = {
        **machine(),
        "pin": str(cpu),
        "ref": args.ref,
        "ref_commit": git("rev-parse", "--short", args.ref),
        "commit": git("rev-parse", "--short", "HEAD") + dirty,
        "rounds": str(args.rounds),
        "load": f"{load:.1f}",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python ci/bench_quic.py" + (f" --ref {args.ref}" if args.ref != "main" else ""),
    }
    section = markdown(result, meta)
    print(section)
    if args.write:
        write_section(args.write, "QUIC Initial", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
