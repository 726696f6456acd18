#!/usr/bin/env python3
"""Watchdog and list-reload benchmark in the netns lab (root).

    sudo python3 ci/bench_watchdog.py [--baseline DIR] [--write BENCHMARKS.md]

A daemon (``--workers 1 --kernel-split off``: every hello goes to the worker) in the
lab's client namespace, the lab's Python TLS server, and
``ci/bench_conn_timeline.py`` opening fresh TLS connections from 8 threads.

1. stop: 2 s into the run the worker gets SIGSTOP, and SIGCONT 5 s later. Counted:
   connections started during the 5 s, how many of them completed, how many
   completed within 1.5 s; and the reaction time: SIGSTOP until the queue is
   no longer bound (/proc/net/netfilter/nfnetlink_queue, polled every 10 ms),
   i.e. until it fails open. Cases: ``worker-timeout 1``, ``worker-timeout 0``
   (the watchdog off) and, with ``--baseline DIR`` (the ``python`` directory of
   another checkout, e.g. main's), that code as it is.
2. lists: the daemon with a 1 M-name host list (``bench.example`` on it); 2 s
   into the run the file is replaced by one with a name more. Measured: the reload
   latency (replace until the worker's stats file counts the reload; written every
   50 ms) and the longest handshake that overlapped the reload, against the
   median handshake before it (a stalled packet loop holds every hello meanwhile).

``--write`` replaces the ``## Watchdog`` section (stops) and the ``## List reload``
section (lists) of the Markdown file, each only when that part ran.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench_common import run_meta, write_section

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

from govpass.lab import Lab  # noqa: E402
from govpass.lab.netns import wait_for  # noqa: E402

NAME = "bench.example"
QUEUE = 200
STOP_AT, STOP_FOR = 2.0, 5.0
RELOAD_AT = 2.0


class Run:
    """One daemon in the lab, run from the package directory `root`."""

    def __init__(self, lab: Lab, root: Path, args: Sequence[str], tag: str) -> None:
        self.lab = lab
        self.run_dir = lab.workdir / f"run-{tag}"
        env = {"PYTHONPATH": str(root), "GOVPASS_RUN_DIR": str(self.run_dir)}
        argv = [sys.executable, "-m", "govpass", "run", "--workers", "1"]
        argv += ["--kernel-split", "off", "--stats-interval", "0.1", *args]
        self.pid = lab.spawn("client", argv, env=env)
        self.log = lab.log_of(self.pid)
        wait_for(lambda: "running:" in self.text(), 60.0, f"govpass ({tag})", step=0.05)

    def text(self) -> str:
        if self.pid not in self.lab.alive():
            raise RuntimeError(f"govpass exited: {self.log.read_text(errors='replace')[-2000:]}")
        return self.log.read_text(errors="replace")

    def worker(self) -> int:
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        (pid,) = (int(p) for p in path.read_text().split())
        return pid

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGTERM)
        self.lab.procs.procs[self.pid].popen.wait(20)
        self.lab.kill(self.pid)


def timeline(lab: Lab, seconds: float) -> subprocess.Popen[str]:
    argv = [sys.executable, str(ROOT / "ci/bench_conn_timeline.py")]
    argv += ["--host", lab.address("server", 4), "--name", NAME, "--cafile", str(lab.cafile)]
    argv += ["--seconds", str(seconds), "--threads", "8"]
    return subprocess.Popen(
        ["ip", "netns", "exec", lab.ns("client"), *argv], stdout=subprocess.PIPE, text=True
    )


def conns_of(proc: subprocess.Popen[str]) -> list[tuple[float, float, bool]]:
    out, _ = proc.communicate(timeout=120)
    return [tuple(c) for c in json.loads(out)["conns"]]  # type: ignore[misc]


def queue_owner(lab: Lab) -> int | None:
    text = lab.exec("client", ["cat", "/proc/net/netfilter/nfnetlink_queue"]).stdout
    for line in text.splitlines():
        cols = line.split()
        if cols and int(cols[0]) == QUEUE:
            return int(cols[1])
    return None


def stop_case(lab: Lab, root: Path, args: Sequence[str], tag: str) -> dict[str, Any]:
    run = Run(lab, root, args, tag)
    try:
        worker = run.worker()
        owner = queue_owner(lab)
        client = timeline(lab, STOP_AT + STOP_FOR + 2.0)
        time.sleep(STOP_AT)
        stopped = time.monotonic()
        os.kill(worker, signal.SIGSTOP)
        reaction = None
        while time.monotonic() < stopped + STOP_FOR:
            if reaction is None and queue_owner(lab) != owner:
                reaction = time.monotonic() - stopped
            time.sleep(0.01)
        if os.path.exists(f"/proc/{worker}"):
            os.kill(worker, signal.SIGCONT)
        conns = conns_of(client)
        replaced = "has not run for" in run.text()
    finally:
        run.stop()
    during = [c for c in conns if stopped <= c[0] < stopped + STOP_FOR]
    before = [c for c in conns if c[0] < stopped]
    return {
        "case": tag,
        "before_per_s": round(len(before) / STOP_AT),
        "started": len(during),
        "completed": sum(ok for _, _, ok in during),
        "completed_1_5s": sum(ok and end - start <= 1.5 for start, end, ok in during),
        "reaction_s": None if reaction is None else round(reaction, 2),
        "replaced": replaced,
    }


def write_list(path: Path, names: int, extra: str = "") -> None:
    rng = random.Random(7)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        f.write(f"{NAME}\n{extra}")
        for i in range(names - 1):
            f.write(f"{rng.getrandbits(40):010x}-{i}.example\n")
    os.replace(tmp, path)


def reloads(run: Run) -> int:
    try:
        data = json.loads((run.run_dir / "workers" / "worker-0.json").read_text())
    except (OSError, ValueError):
        return -1
    return int(data.get("list_reloads", 0))


def lists_case(lab: Lab, root: Path, names: int, tag: str) -> dict[str, Any]:
    path = lab.workdir / "hosts-1m.txt"
    write_list(path, names)
    run = Run(lab, root, ["--hostlist", str(path)], tag)
    try:
        wait_for(lambda: reloads(run) >= 0, 30.0, "the worker's stats")
        base = reloads(run)
        write_list(path.with_name("hosts-next.txt"), names, "new.example\n")
        client = timeline(lab, RELOAD_AT + 8.0)
        time.sleep(RELOAD_AT)
        replaced = time.monotonic()
        os.replace(path.with_name("hosts-next.txt"), path)
        wait_for(lambda: reloads(run) > base, 180.0, "the reload", step=0.01)
        done = time.monotonic()
        conns = conns_of(client)
    finally:
        run.stop()
    if not any(ok for _, _, ok in conns):
        raise RuntimeError(f"{tag}: no connection completed ({len(conns)} tried)")
    calm = [end - start for start, end, ok in conns if ok and end < replaced]
    overlapping = [end - start for start, end, ok in conns if start < done and end > replaced]
    return {
        "case": tag,
        "names": names,
        "reload_s": round(done - replaced, 2),
        "median_handshake_ms": round(statistics.median(calm) * 1000, 1),
        "longest_during_reload_ms": round(max(overlapping) * 1000, 1),
    }


def _run_header(meta: dict[str, Any]) -> list[str]:
    """The machine, date, commit and command lines every section starts with."""
    m = meta["machine"]
    return [
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, kernel {m['kernel']}, Python {m['python']}; "
        f"{meta['date']}, commit {meta['commit']}.",
        "",
        "```",
        meta["command"],
        "```",
        "",
    ]


def stop_markdown(meta: dict[str, Any], stops: list[dict[str, Any]]) -> str:
    out = [
        "## Watchdog",
        "",
        "A worker stopped with SIGSTOP for 5 s (`--workers 1 --kernel-split off`, the lab's "
        "Python TLS server, 8 client threads opening fresh TLS connections).",
        "",
        *_run_header(meta),
        "| case | connections/s before | started during the stop | completed | "
        "completed within 1.5 s | SIGSTOP until the queue fails open |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for s in stops:
        react = "never (until SIGCONT)" if s["reaction_s"] is None else f"{s['reaction_s']} s"
        out.append(
            f"| {s['case']} | {s['before_per_s']} | {s['started']} | {s['completed']} | "
            f"{s['completed_1_5s']} | {react} |"
        )
    out += [
        "",
        "Baseline: the `--baseline` checkout (main before the watchdog). The reaction time is "
        "the bound, less the time since the worker's last beat (up to one 0.25 s idle tick), "
        "plus up to one parent check (a fifth of the bound). Every connection the stopped "
        "worker held completed once TCP resent its hello after the kill.",
    ]
    return "\n".join(out) + "\n"


def lists_markdown(meta: dict[str, Any], lists: list[dict[str, Any]]) -> str:
    names = f"{lists[0]['names'] / 1e6:g} M" if lists else "?"
    out = [
        "## List reload",
        "",
        f"A {names}-name host list replaced while connections run (`--workers 1 "
        "--kernel-split off`, the lab's Python TLS server, 8 client threads opening fresh "
        "TLS connections). A packet loop stalled by the reload holds every hello meanwhile: "
        "the longest handshake that overlapped the reload, against the median one before "
        "it, shows the stall.",
        "",
        *_run_header(meta),
        "| case | reload latency | median handshake | longest handshake overlapping the reload "
        "| its excess over the median, vs the first case |",
        "| --- | --- | --- | --- | --- |",
    ]
    first = None
    for r in lists:
        excess = r["longest_during_reload_ms"] - r["median_handshake_ms"]
        first = excess if first is None else first
        ratio = f"x{excess / first:.2f}" if first > 0 else "-"
        out.append(
            f"| {r['case']} | {r['reload_s']} s | {r['median_handshake_ms']} ms | "
            f"{r['longest_during_reload_ms']} ms | {excess:.1f} ms ({ratio}) |"
        )
    out += [
        "",
        "The cases run one after the other in one lab; baseline: the `--baseline` checkout. "
        "The latency is the read and parse on the worker's list thread, on a 2-core machine "
        "shared with other jobs.",
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, help="python/ directory of another checkout")
    ap.add_argument("--names", type=int, default=1_000_000, help="host list size")
    ap.add_argument("--no-lists", action="store_true", help="the stop cases only")
    ap.add_argument("--no-stop", action="store_true", help="the list reload cases only")
    ap.add_argument("--write", type=Path, help="Markdown file whose sections to replace")
    args = ap.parse_args(argv)
    here = ROOT / "python"
    cases: list[tuple[str, Path, list[str]]] = []
    if args.baseline:
        cases.append(("baseline", args.baseline, []))
    cases += [
        ("worker-timeout 1", here, ["--worker-timeout", "1"]),
        ("worker-timeout 0 (off)", here, ["--worker-timeout", "0"]),
    ]
    if args.no_stop:
        cases = []
    stops, lists = [], []
    with Lab() as lab:
        lab.start_server(names=[NAME])
        for tag, root, extra in cases:
            stops.append(stop_case(lab, root, extra, tag))
            print(json.dumps(stops[-1]), flush=True)
        if not args.no_lists:
            roots = [("baseline", args.baseline)] if args.baseline else []
            for tag, root in [*roots, ("this commit", here)]:
                lists.append(lists_case(lab, root, args.names, tag))
                print(json.dumps(lists[-1]), flush=True)
    meta = run_meta("bench_watchdog.py")
    for heading, section in [
        ("Watchdog", stop_markdown(meta, stops) if stops else ""),
        ("List reload", lists_markdown(meta, lists) if lists else ""),
    ]:
        if section:
            print(section)
            if args.write:
                write_section(args.write, heading, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
