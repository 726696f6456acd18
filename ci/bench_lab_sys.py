"""System-side measurements for ci/bench_lab.py: process trees, CPU seconds from /proc,
kernel threads, machine-wide busy time, and a description of the machine."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_tree(root: int) -> list[int]:
    """``root`` and all its live descendants (from /proc/*/stat parent pids)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime+stime (plus reaped children's) per pid, in seconds."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the ")": state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14
        out[pid] = sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK
    return out


def kernel_threads() -> list[int]:
    """kthreadd (pid 2) and its children: ksoftirqd, kworkers, ..."""
    out = [2]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == "2":
                        out.append(int(entry))
            except (OSError, IndexError):
                continue
    return out


def machine_busy() -> tuple[float, float, float]:
    """CPU seconds (all cores) in processes (user+nice+system), in irq+softirq, and stolen,
    from /proc/stat. Softirq time (the lab's packet forwarding, mostly) is not part of
    any process's utime/stime, so it is kept apart."""
    with open("/proc/stat", encoding="ascii") as f:
        cols = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice
    steal = cols[7] if len(cols) > 7 else 0
    return ((cols[0] + cols[1] + cols[2]) / CLK_TCK, (cols[5] + cols[6]) / CLK_TCK, steal / CLK_TCK)


def machine(repo: Path) -> dict[str, Any]:
    model, cores = platform.processor() or "?", os.cpu_count() or 0
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass

    def version(argv: list[str]) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        text = (p.stdout + p.stderr).strip().splitlines()
        return text[0] if text else "?"

    return {
        "cpu": model,
        "cores": cores,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nginx": version(["nginx", "-v"]).replace("nginx version: ", ""),
        "wrk": version(["wrk", "-v"]).split(" [")[0],
        "curl": version(["curl", "--version"]).split(" (")[0],
        "iptables": version(["iptables", "--version"]),
        "git": subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        or "?",
    }
