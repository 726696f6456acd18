"""How long `govpass probe` takes for one blocked host, per lab censor (median).

Runs in the netns lab (client — censor — server, the lab's Python TLS server) as
root: for each censor, ``rounds`` runs of ``python -m govpass probe blocked.example
--connect SERVER --json`` with the default tries and timeout, wall time from start to
exit. Writes the ``## Probe`` section of BENCHMARKS.md (``--no-write``: print only).

    sudo python3 ci/bench_probe.py [--rounds 3] [--censors firstpacket,string,...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench_common import run_meta, write_section

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

from govpass.lab import Lab  # noqa: E402
from govpass.runtime.signals import signals_raise  # noqa: E402

BLOCKED, ALLOWED = "blocked.example", "allowed.example"
CENSORS = ("firstpacket", "string", "tspu", "reassemble", "address")


def one_probe(lab: Lab) -> tuple[float, dict[str, Any]]:
    argv = [sys.executable, "-m", "govpass", "probe", BLOCKED]
    argv += ["--connect", lab.address("server", 4), "--json"]
    env = ["env", f"PYTHONPATH={REPO / 'python'}"]
    start = time.monotonic()
    proc = lab.exec("client", [*env, *argv], check=False, timeout=900)
    took = time.monotonic() - start
    if not proc.stdout.strip():
        raise SystemExit(f"probe printed nothing: {proc.stderr[-2000:]}")
    record: dict[str, Any] = json.loads(proc.stdout.splitlines()[0])
    return took, record


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--censors", default=",".join(CENSORS))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    censors = [c for c in args.censors.split(",") if c]
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    with signals_raise(), Lab() as lab:  # SIGTERM too: the lab is torn down
        lab.start_server(names=[BLOCKED, ALLOWED])
        for censor in censors:
            lab.start_censor(censor, names=[] if censor == "address" else [BLOCKED])
            try:
                runs = [one_probe(lab) for _ in range(args.rounds)]
            finally:
                lab.stop_censor()
            times = [t for t, _ in runs]
            rec = runs[-1][1]
            verdicts = sorted({r["verdict"] for _, r in runs})
            rows.append(
                {
                    "censor": censor,
                    "median": statistics.median(times),
                    "min": min(times),
                    "max": max(times),
                    "verdicts": "/".join(verdicts),
                    "strategy": rec["strategy"] or rec["reason"],
                    "tried": len(rec["tried"]),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    meta = run_meta("bench_probe.py", took=round(time.monotonic() - started, 1))
    m = meta["machine"]
    lines = [
        "## Probe",
        "",
        "Wall time of `govpass probe blocked.example --connect SERVER --json` (default",
        "`--tries 3 --timeout 4`, no control host, one host) in the netns lab, per censor,",
        f"median of {args.rounds} runs, measured by `ci/bench_probe.py`. A censor that drops",
        "a blocked flow costs a full timeout per failing strategy, one that resets costs",
        "almost nothing: the ladder stops a strategy at its first failure.",
        "",
        f"- Command: `{meta['command']}` (took {meta['took']} s)",
        f"- Machine: {m['cpu']}, {m['cpus']} cores, kernel {m['kernel']}, Python {m['python']}",
        f"- Date: {meta['date']}, commit {meta['commit']}",
        "",
        "| censor | median s | min s | max s | verdict | strategy / reason | strategies tried |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['censor']} | {r['median']:.1f} | {r['min']:.1f} | {r['max']:.1f} | "
            f"{r['verdicts']} | {r['strategy']} | {r['tried']} |"
        )
    section = "\n".join(lines) + "\n"
    if args.no_write:
        print(section)
    else:
        write_section(REPO / "BENCHMARKS.md", "Probe", section)
        print(section)


if __name__ == "__main__":
    main()
