"""Host list and IP set reloads off the packet loop.

Reading and parsing a list takes time that a packet loop does not have (a
million names: most of a second; a list replaced by a FIFO: for ever). A
worker's :class:`ListThread` runs its :class:`~govpass.targeting.ListWatcher`
on a thread of its own; the loop's timer only swaps in profiles that are
ready (:meth:`ListThread.take`), which costs a few microseconds. The file's
bytes go to Rust whole (``HostList.from_bytes``/``IpSet.from_bytes``), which
splits, checks and builds them without the GIL, so the loop keeps handling
packets meanwhile.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from govpass.targeting import ListWatcher


class ListThread:
    """Polls `watcher` on a daemon thread; new profiles wait for :meth:`take`.
    `busy` (optional) is held during each poll: reads, parse, log line."""

    def __init__(self, watcher: ListWatcher, busy: threading.Lock | None = None) -> None:
        self.watcher = watcher
        # The engine's set_profiles: called from the loop's thread only.
        self._apply: Callable[[list[Any]], None] = watcher.apply
        watcher.apply = self._put
        # Its log lines wait with the profiles: "lists reloaded" is said once they apply.
        self._log = watcher.log
        watcher.log = self._note if watcher.log is not None else None
        self._notes: list[str] = []
        self._ready: list[Any] | None = None
        self._lock = threading.Lock()  # guards _ready only, never held during a build
        self._wake = threading.Event()
        self._closed = False
        self._busy = busy
        self._thread = threading.Thread(target=self._run, name="govpass-lists", daemon=True)

    @property
    def reloads(self) -> int:
        return self.watcher.reloads

    @property
    def failures(self) -> int:
        return self.watcher.failures

    def start(self) -> ListThread:
        self._thread.start()
        return self

    def request(self) -> None:
        """SIGHUP: re-read everything now (on the thread)."""
        self.watcher.request()
        self._wake.set()

    def take(self) -> bool:
        """Applies profiles the thread finished since the last call; True if any."""
        with self._lock:
            profiles, self._ready = self._ready, None
            notes, self._notes = self._notes, []
        if profiles is None:
            return False
        self._apply(profiles)
        self._say(notes)
        return True

    def close(self, timeout: float = 1.0) -> None:
        """Stops the thread (a read blocked in the kernel cannot be interrupted:
        the thread is a daemon thread and goes with the process)."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout)

    def _put(self, profiles: list[Any]) -> None:
        with self._lock:
            self._ready = profiles

    def _note(self, msg: str) -> None:
        with self._lock:
            self._notes.append(msg)

    def _say(self, notes: list[str]) -> None:
        if self._log is not None:
            for msg in notes:
                self._log(msg)

    def _flush_unless_pending(self) -> None:
        """A poll that built nothing (a broken file) says so at once."""
        with self._lock:
            if self._ready is not None:
                return
            notes, self._notes = self._notes, []
        self._say(notes)

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.watcher.interval)
            self._wake.clear()
            if self._closed:
                return
            with self._busy if self._busy is not None else contextlib.nullcontext():
                try:
                    self.watcher.poll()
                except Exception as e:  # a failed reload keeps the lists in force
                    self.watcher.failures += 1
                    why = f"{type(e).__name__}: {str(e)[:200]!r}"
                    self.watcher._log(f"list reload failed: {why}")
                self._flush_unless_pending()
