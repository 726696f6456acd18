"""Worker heartbeats: a stopped or hung worker must not hold its queue.

A worker that is alive but does not run (SIGSTOP, a debugger, a loop stuck in a
list parse) keeps its queue bound: the kernel queues every hello for it and
fails open only once the queue is full, so new TLS connections stall. Each
worker's packet loop stamps its slot in shared memory (CLOCK_MONOTONIC, which
the parent reads the same way); the parent kills a worker whose stamp is older
than the bound and starts it again. While no process is bound the rules' bypass
flag lets packets pass unmodified; packets the dead worker held are dropped by
the kernel's queue flush and TCP sends them again.
"""

from __future__ import annotations

import mmap
import multiprocessing.context
import time
from typing import Any


class Heartbeats:
    """One shared slot per worker: when its packet loop last ran (0: never)."""

    def __init__(self, count: int, ctx: multiprocessing.context.BaseContext) -> None:
        # An anonymous shared mapping, inherited by the forked workers: no file behind
        # it, so it works where /dev/shm is not writable (a service's user, a chroot).
        # No lock, one writer per slot; an aligned 8-byte store is atomic.
        self._map = mmap.mmap(-1, max(1, count) * 8)
        self._slots: Any = memoryview(self._map).cast("d")
        del ctx  # the workers are forked (the mapping is shared, not pickled)

    def beat(self, index: int, now: float | None = None) -> None:
        self._slots[index] = time.monotonic() if now is None else now

    def age(self, index: int, now: float | None = None) -> float:
        """Seconds since worker `index` last beat (inf before its first beat)."""
        last = float(self._slots[index])
        if last <= 0.0:
            return float("inf")
        return (time.monotonic() if now is None else now) - last

    def hung(self, indexes: list[int], timeout: float, now: float | None = None) -> list[int]:
        """The workers among `indexes` that have not beaten within `timeout` (0: off)."""
        if timeout <= 0:
            return []
        now = time.monotonic() if now is None else now
        return [i for i in indexes if self.age(i, now) > timeout]


def check_interval(timeout: float) -> float:
    """How often the parent looks at the heartbeats: a fifth of the bound, so a
    hung worker is replaced within about 1.2 x the bound (at least every 0.25 s)."""
    if timeout <= 0:
        return 1.0
    return min(max(timeout / 5, 0.02), 0.25)
