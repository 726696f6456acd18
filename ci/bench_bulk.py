#!/usr/bin/env python3
"""Bulk throughput under govpass's rules and its kernel split program.

Why a separate benchmark: bench_lab.py measures bulk transfers next to everything
else, four rounds per side, and one 64 MB transfer on these shared 2 vCPUs varies
by +-10 % from one try to the next, more than the effect in question. Here only
govpass changes between rounds, the kinds of round alternate (ABC CBA ...), and
every round keeps the best of a few transfers each way. Kinds: ``none``; the
rules alone, no daemon (``bpf``, ``conntrack``: with ``--queue-bypass`` the few
queued ClientHellos pass); the daemon (``run``: the default, whose kernel split
program sees every packet leaving the interface; ``run-ks-off``: the same with
``--kernel-split off``, so ``run`` against it is the program's cost).

Run as root from the repository: ``python3 ci/bench_bulk.py [--rounds 10]``.
Writes the ``## Bulk`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "python"))

import bench_lab  # noqa: E402
from bench_common import run_meta, write_section  # noqa: E402

KINDS = ("none", "bpf", "conntrack", "run", "run-ks-off")
DAEMON_ARGS = {"run": [], "run-ks-off": ["--kernel-split", "off"]}
HEADING = "Bulk"


def measure(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    from govpass.rules import RuleSpec, Runner, install, remove

    results: dict[str, dict[str, list[float]]] = {k: {"down": [], "up": []} for k in KINDS}
    with bench_lab.lab_bench(["--bulk-mb", str(args.bulk_mb)]) as bench:
        runner = Runner(["ip", "netns", "exec", bench.lab.ns("client")])
        for index in range(args.rounds):
            order = KINDS if index % 2 == 0 else KINDS[::-1]
            for kind in order:
                if kind in DAEMON_ARGS:
                    bench.start_daemon(DAEMON_ARGS[kind])
                elif kind != "none":
                    result = install(RuleSpec(prefilter=kind), runner, "iptables-nft")  # type: ignore[arg-type]
                    if result.prefilter != kind:
                        raise SystemExit(
                            f"bench_bulk: wanted {kind}, got {result.prefilter_summary}"
                        )
                try:
                    down = max(bench.curl_get()["mbps"] for _ in range(args.reps))
                    up = max(bench.curl_put()["mbps"] for _ in range(args.reps))
                finally:
                    if kind in DAEMON_ARGS:
                        bench.stop_daemon()
                    elif kind != "none":
                        remove(runner)
                results[kind]["down"].append(down)
                results[kind]["up"].append(up)
                print(f"round {index + 1} {kind:9s} down {down:6.0f} MB/s  up {up:6.0f} MB/s")
    return results


def section(results: dict[str, dict[str, list[float]]], meta: dict[str, Any]) -> str:
    base = {d: statistics.median(results["none"][d]) for d in ("down", "up")}
    rows = []
    for kind in KINDS:
        med = {d: statistics.median(results[kind][d]) for d in ("down", "up")}
        rows.append(
            f"| {kind} | {med['down']:.0f} | x{med['down'] / base['down']:.3f} | "
            f"{med['up']:.0f} | x{med['up'] / base['up']:.3f} |"
        )
    med_of = {k: {d: statistics.median(results[k][d]) for d in ("down", "up")} for k in KINDS}
    program = (
        "The kernel split program's cost (`run` against `run-ks-off`): download "
        f"x{med_of['run']['down'] / med_of['run-ks-off']['down']:.3f}, upload "
        f"x{med_of['run']['up'] / med_of['run-ks-off']['up']:.3f}."
    )
    m = meta["machine"]
    return "\n".join(
        [
            f"## {HEADING}",
            "",
            "One 64 MB TLS download and upload (curl, nginx) through the lab: `none` (no "
            "govpass), govpass's rules alone in the client namespace, no daemon (`bpf`: the "
            "eBPF pre-filter, `conntrack`: the connmark/connbytes pre-filter), and the daemon "
            "(`run`: `govpass run --workers 1`, the default, with the kernel split program on "
            "the client's interface; `run-ks-off`: the same with `--kernel-split off`). Kinds "
            "alternate in ABC CBA order; each round keeps the best of "
            f"{meta['reps']} transfers each way; medians over {meta['rounds']} rounds.",
            "",
            f"- Command: `{meta['command']}`",
            f"- Machine: {m['cpu']}, {m['cpus']} CPUs, kernel {m['kernel']}, Python {m['python']}",
            f"- Date: {meta['date']}, commit {meta['commit']}",
            "",
            "| govpass | download MB/s | vs none | upload MB/s | vs none |",
            "|---|---|---|---|---|",
            *rows,
            "",
            program,
            "",
            "Per round (MB/s): "
            + "; ".join(
                f"{k} down {[round(x) for x in results[k]['down']]} "
                f"up {[round(x) for x in results[k]['up']]}"
                for k in KINDS
            )
            + ".",
            "",
        ]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--reps", type=int, default=2, help="transfers each way per round")
    ap.add_argument("--bulk-mb", type=int, default=64)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_bulk: run as root (network namespaces, iptables)", file=sys.stderr)
        return 2
    started = time.monotonic()
    results = measure(args)
    meta = run_meta("bench_bulk.py", rounds=args.rounds, reps=args.reps)
    text = section(results, meta)
    print(text)
    print(f"took {time.monotonic() - started:.0f} s")
    if not args.no_write:
        write_section(REPO / "BENCHMARKS.md", HEADING, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
