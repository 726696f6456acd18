"""The run directory: where every backend keeps the state of a live run, and how
`govpass stats` reads it back.

A backend's parent writes ``daemon.json`` (what runs, since when, with which
settings) and, every stats interval, ``stats.json``; workers write their own
counters, NFQUEUE workers into the ``workers/`` subdirectory (owned by their
unprivileged user), the divert and FreeBSD workers as ``worker-0.json``. Every
file is replaced in one step and never through a symlink (govpass.safefile).
"""

from __future__ import annotations

import json
import os
from contextlib import suppress
from pathlib import Path
from typing import Any

from govpass import host_os

DAEMON_STATE = "daemon.json"
STATS = "stats.json"
LEARNER_STATS = "learner.json"
KERNEL_SPLIT_STATS = "kernel-split.json"

# Subdirectory of the run directory where workers write their counters: owned by the
# workers' user, so the run directory itself stays writable by its owner only.
WORKERS = "workers"

STRATEGY_STATS = "strategy-learner.json"
QUEUE_STATS = "queues.json"  # the parent's count of packets the queues passed by

RUN_DIR_ENV = "GOVPASS_RUN_DIR"
# Windows has no /run: the service's folder (scripts/windows/govpass_service.py).
DEFAULT_RUN_DIR = (
    os.path.join(os.environ.get("PROGRAMDATA", r"C:\ProgramData"), "govpass", "run")
    if host_os.is_windows()
    else "/run/govpass"
)


def run_dir() -> Path:
    return Path(os.environ.get(RUN_DIR_ENV, DEFAULT_RUN_DIR))


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """A state file of the run directory, replaced in one step (see govpass.safefile).
    No fsync: counters and the description of a live process are worthless after
    a crash, and workers rewrite theirs from the packet loop several times a second."""
    from govpass.safefile import write_atomic

    write_atomic(path, json.dumps(data), sync=False)


def write_json_at(dirfd: int, name: str, data: dict[str, Any]) -> None:
    """Like :func:`write_json_atomic`, in the directory open as `dirfd`: a worker opens
    its stats directory before it changes user, so the directories above it need not
    be searchable by that user."""
    tmp = f".{name}.{os.getpid()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o640, dir_fd=dirfd)
    try:
        os.fchmod(fd, 0o640)
        os.write(fd, json.dumps(data).encode())
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)


# The counters of workers that were replaced, and the parent's restart counts.
# Named like the workers' files so that a new run's start clears it with them.
RETIRED = "worker-retired.json"


def add_counters(total: dict[str, Any], data: dict[str, Any], gauges: bool = True) -> None:
    """Adds one worker's counters to `total` (fail-open reasons by reason);
    `gauges=False` leaves out the values of the moment (``*_now``), which a
    worker that is gone no longer has."""
    for key, value in data.items():
        if key == "queue" or (not gauges and key.endswith("_now")):
            continue
        if isinstance(value, dict):
            bucket = total.setdefault("fail_open", {})
            for reason, n in value.items():
                if isinstance(n, int):
                    bucket[reason] = bucket.get(reason, 0) + n
        elif isinstance(value, int | float) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value


def aggregate(directory: Path) -> dict[str, Any]:
    """Sums the workers' counters (replaced workers' included) and adds kernel queue drops."""
    from govpass.backends.nfqueue import queue_table

    total: dict[str, Any] = {"fail_open": {}, "workers": 0}
    queues: list[int] = []
    with suppress(OSError, ValueError):  # the parent's auto-learning counters
        learner = json.loads((directory / LEARNER_STATS).read_text(encoding="utf-8"))
        total.update({k: v for k, v in learner.items() if isinstance(v, int)})
    with suppress(OSError, ValueError):  # the parent's --strategy auto counters
        learned = json.loads((directory / STRATEGY_STATS).read_text(encoding="utf-8"))
        total.update({k: v for k, v in learned.items() if isinstance(v, int)})
        counts = learned.get("counts")
        if isinstance(counts, dict):
            total["strategy_counts"] = {str(k): v for k, v in counts.items() if isinstance(v, int)}
    with suppress(OSError, ValueError):  # the parent's count of what passed the queues by
        passed = json.loads((directory / QUEUE_STATS).read_text(encoding="utf-8"))
        if isinstance(passed, dict) and type(passed.get("bypassed")) is int:
            total["bypassed"] = passed["bypassed"]
    with suppress(OSError, ValueError):  # the parent's kernel split counters
        kernel = json.loads((directory / KERNEL_SPLIT_STATS).read_text(encoding="utf-8"))
        total.update({f"kernel_{k}": v for k, v in kernel.items() if isinstance(v, int)})
        if isinstance(kernel.get("state"), str):
            total["kernel_split_state"] = kernel["state"]
    files = [*directory.glob("worker-*.json"), *(directory / WORKERS).glob("worker-*.json")]
    for path in sorted(files):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        if path.name != RETIRED:
            total["workers"] += 1
            queues.append(int(data.get("queue", -1)))
        add_counters(total, data)
    nfqueues = [q for q in queues if q >= 0]
    if nfqueues:  # other backends report their own drop counters
        table = queue_table()
        total["queue_dropped"] = sum(table[q]["queue_dropped"] for q in nfqueues if q in table)
        total["user_dropped"] = sum(table[q]["user_dropped"] for q in nfqueues if q in table)
    return total


def jsonable(d: dict[str, Any]) -> dict[str, Any]:
    """Settings as JSON: tuples become lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
