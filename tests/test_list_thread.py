"""List reloads on a thread: the loop's timer only swaps in finished profiles, so
a slow or blocking list file never stops it."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any

from govpass.config import load
from govpass.list_thread import ListThread
from govpass.targeting import ListWatcher, Targeting


class Applied:
    def __init__(self) -> None:
        self.calls: list[tuple[list[Any], str]] = []

    def __call__(self, profiles: list[Any]) -> None:
        self.calls.append((profiles, threading.current_thread().name))


def setup(tmp_path: Path, interval: float = 0.05) -> tuple[Path, Applied, ListThread, list[str]]:
    path = tmp_path / "hosts.txt"
    path.write_text("blocked.example\n")
    targeting = Targeting.from_config(load(env={}, flags={"hostlist": str(path)}))
    targeting.build()
    applied, logs = Applied(), []
    watcher = ListWatcher(targeting, applied, logs.append, interval=interval)
    return path, applied, ListThread(watcher).start(), logs


def wait_take(lists: ListThread, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if lists.take():
            return True
        time.sleep(0.01)
    return False


def test_a_changed_file_is_applied_by_take_on_the_calling_thread(tmp_path: Path) -> None:
    path, applied, lists, logs = setup(tmp_path)
    try:
        assert not lists.take()
        path.write_text("blocked.example\nother.example\n")
        os.utime(path, ns=(1, 10**18))
        assert applied.calls == []  # built on the thread, not applied there
        deadline = time.monotonic() + 5
        while lists._ready is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert logs == [], "said before the new lists apply"
        assert wait_take(lists)
        assert len(applied.calls) == 1
        assert applied.calls[0][1] == threading.current_thread().name
        assert lists.reloads == 1 and lists.failures == 0
        assert any("lists reloaded (changed)" in m for m in logs), logs
        assert not lists.take()  # once
    finally:
        lists.close()


def test_a_request_reloads_at_once(tmp_path: Path) -> None:
    _, _, lists, logs = setup(tmp_path, interval=3600)
    try:
        lists.request()
        assert wait_take(lists, 2.0)
        assert any("lists reloaded (SIGHUP)" in m for m in logs), logs
    finally:
        lists.close()


def test_a_fifo_blocks_the_thread_and_never_the_caller(tmp_path: Path) -> None:
    path, _, lists, _ = setup(tmp_path)
    path.unlink()
    os.mkfifo(path)
    try:
        time.sleep(0.3)  # the thread is now blocked opening the FIFO
        started = time.monotonic()
        for _ in range(100):
            assert not lists.take()
        assert time.monotonic() - started < 0.1
    finally:
        # A writer lets the blocked open (and read) finish, so the thread can end.
        with contextlib.suppress(OSError):  # ENXIO: nobody has it open for reading
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        lists.close(timeout=2.0)
