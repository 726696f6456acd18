"""What the benchmarks share: the machine description, a run's description, the
process RSS, and replacing one `## Heading` section of BENCHMARKS.md."""

from __future__ import annotations

import platform
import re
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def machine() -> dict[str, str]:
    """CPU model and count (lscpu), kernel and Python versions."""
    model = cpus = "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "Model name":
                model = val.strip()
            elif key.strip() == "CPU(s)":
                cpus = val.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return {
        "cpu": model,
        "cpus": cpus,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def run_meta(script: str, **extra: Any) -> dict[str, Any]:
    """Machine, command line (as run from the repository as root), date and
    commit of this run, plus ``extra``."""
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    return {
        "machine": machine(),
        "command": " ".join([f"sudo python3 ci/{script}", shlex.join(sys.argv[1:])]).strip(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        **extra,
    }


def rss_bytes() -> int:
    """Resident set size of this process."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def write_section(path: Path, heading: str, section: str) -> None:
    """Replaces the `## {heading}` section of `path` with `section` (appended
    when absent). The file is re-read right before writing: other benchmarks
    may have rewritten their own sections meanwhile."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")
