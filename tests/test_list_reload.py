"""List reloads: the watcher notices changed files (mtime, size, inode), re-reads
on request (SIGHUP), keeps the previous profiles when a file is broken and says
so once; the daemon forwards SIGHUP to its workers instead of stopping."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from govpass import SEND, Engine, EngineConfig
from govpass.config import load
from govpass.runtime.nfqueue_service import NfqueueService, WorkerHandle
from govpass.targeting import ListWatcher, Targeting
from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

HOSTS = " (accepted: host names, ^name for the name alone, # comments)"
READABLE = " (accepted: a readable regular file)"
HELLO = (Path(__file__).parent / "fixtures" / "hellos" / "openssl_default.bin").read_bytes()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Setup:
    """A hostlist file, targeting for it, an engine and a watcher on a fake clock."""

    def __init__(self, tmp_path: Path, text: str = "other.example\n") -> None:
        self.path = tmp_path / "hosts.txt"
        self.path.write_text(text)
        self.targeting = Targeting.from_config(load(env={}, flags={"hostlist": str(self.path)}))
        self.engine = Engine(EngineConfig())
        self.engine.set_profiles(self.targeting.build())
        self.applied: list[list[Any]] = []
        self.logs: list[str] = []
        self.clock = Clock()
        self.watcher = ListWatcher(self.targeting, self.apply, self.logs.append, clock=self.clock)
        self.port = 40000

    def apply(self, profiles: list[Any]) -> None:
        self.applied.append(profiles)
        self.engine.set_profiles(profiles)

    def tick(self, seconds: float = 1.0) -> bool:
        self.clock.now += seconds
        return self.watcher.poll()

    def splits(self) -> bool:
        """Whether a new connection to blocked.example is split now."""
        self.port += 1
        pkt = IP(src="198.51.100.2", dst="203.0.113.9") / TCP(
            sport=self.port, dport=443, seq=1, ack=1, flags="PA"
        )
        actions = self.engine.process(bytes(pkt / Raw(HELLO)), self.clock.now, object())
        return actions is not None and any(a.kind == SEND for a in actions)


def edit(path: Path, text: str) -> None:
    """Rewrites in place and moves mtime on, so even a same-size edit is a change."""
    before = os.stat(path)
    path.write_text(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))


def test_change_is_picked_up_within_the_interval(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    assert not s.splits()
    assert not s.tick(), "nothing changed"
    edit(s.path, "other.example\nblocked.example\n")
    assert not s.tick(0.5), "polls at most once per interval"
    assert s.tick(0.6)
    assert s.splits()
    assert s.logs == ["lists reloaded (changed): listed: split (2 hosts); other: pass"]
    assert s.watcher.reloads == 1


def test_replaced_file_same_size_and_mtime_is_seen_by_inode(tmp_path: Path) -> None:
    s = Setup(tmp_path, "xxxxxxx.example\n")
    st = os.stat(s.path)
    new = tmp_path / "hosts.new"
    new.write_text("blocked.example\n")
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, s.path)  # how editors and `mv` update a file: a new inode
    assert s.tick()
    assert s.splits()


def test_broken_file_keeps_the_previous_list_and_says_so_once(tmp_path: Path) -> None:
    s = Setup(tmp_path, "blocked.example\n")
    assert s.splits()
    edit(s.path, "blocked.example\nfine.example\n\n# c\n\n\nbad host\n")
    assert not s.tick()
    assert s.splits(), "the previous list is still in force"
    assert s.logs == [
        f'hostlist {s.path} line 7: "bad host" is not a valid entry{HOSTS}; '
        "keeping the previous list"
    ]
    for _ in range(5):
        assert not s.tick()
    assert len(s.logs) == 1, "one line per broken state, not one per poll"
    edit(s.path, "other.example\n")  # fixed: the new list replaces the old one
    assert s.tick()
    assert not s.splits()
    assert s.watcher.failures == 1 and s.watcher.reloads == 1


def test_one_broken_file_is_reported_once_while_another_keeps_changing(tmp_path: Path) -> None:
    # The auto list is rewritten as names are learned; each write is a rebuild, and
    # the broken host list beside it is still the same failure: said once.
    broken = tmp_path / "hosts.txt"
    broken.write_text("blocked.example\n")
    auto = tmp_path / "auto.txt"
    auto.write_text("")
    flags = {"hostlist": str(broken), "hostlist-auto": str(auto)}
    targeting = Targeting.from_config(load(env={}, flags=flags))
    targeting.build()
    clock = Clock()
    logs: list[str] = []
    watcher = ListWatcher(targeting, lambda p: None, logs.append, clock=clock)
    edit(broken, "bad host\n")
    for n in range(3):
        edit(auto, f"learned{n}.example\n")
        clock.now += 1
        assert not watcher.poll()
    assert len(logs) == 1 and "line 1" in logs[0], logs
    assert watcher.failures == 3
    watcher.request()  # SIGHUP: the answer is said again
    assert not watcher.poll()
    assert len(logs) == 2
    edit(broken, "blocked.example\n")
    clock.now += 1
    assert watcher.poll()
    edit(broken, "bad host\n")
    clock.now += 1
    assert not watcher.poll()
    assert len(logs) == 4, "broken again after a good build: said again"


def test_fifo_in_place_of_a_list_keeps_the_previous_list(tmp_path: Path) -> None:
    s = Setup(tmp_path, "blocked.example\n")
    s.path.unlink()
    os.mkfifo(s.path)  # opened for reading, it would wait for a writer forever
    assert not s.tick()
    assert s.logs == [
        f"hostlist {s.path}: a FIFO (accepted: a regular file); keeping the previous list"
    ]
    assert s.splits()


def test_deleted_file_keeps_the_previous_list(tmp_path: Path) -> None:
    s = Setup(tmp_path, "blocked.example\n")
    s.path.unlink()
    assert not s.tick()
    assert s.logs == [
        f"hostlist {s.path}: cannot read: no such file{READABLE}; keeping the previous list"
    ]
    assert s.splits()
    s.path.write_text("other.example\n")
    assert s.tick()
    assert not s.splits()


def test_request_rereads_an_invisible_change(tmp_path: Path) -> None:
    s = Setup(tmp_path, "xxxxxxx.example\n")
    st = os.stat(s.path)
    with s.path.open("r+") as f:  # same inode, same size ...
        f.write("blocked.example\n")
    os.utime(s.path, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the same mtime
    assert not s.tick(5)
    assert not s.splits()
    s.watcher.request()  # SIGHUP
    assert s.watcher.poll(), "a request does not wait for the interval"
    assert s.splits()
    assert s.logs[-1].startswith("lists reloaded (SIGHUP)")


def test_auto_file_appearing_later(tmp_path: Path) -> None:
    auto = tmp_path / "auto.txt"
    targeting = Targeting.from_config(load(env={}, flags={"hostlist-auto": str(auto)}))
    targeting.build()
    clock = Clock()
    applied: list[Any] = []
    watcher = ListWatcher(targeting, applied.append, clock=clock)
    auto.write_text("blocked.example\n")
    clock.now += 1
    assert watcher.poll() and len(applied) == 1


# ------------------------------------------------------------------ signals


class _Proc:
    def __init__(self, popen: subprocess.Popen[str]) -> None:
        self.popen = popen
        self.pid = popen.pid

    def is_alive(self) -> bool:
        return self.popen.poll() is None


def test_daemon_forwards_sighup_to_every_worker(tmp_path: Path) -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGHUP, lambda *a: sys.exit(42))\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    logs: list[str] = []
    daemon = NfqueueService(load(env={}), logs.append)
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        daemon.workers = [WorkerHandle(i, _Proc(p)) for i, p in enumerate(procs)]
        daemon.reload()
        assert [p.wait(timeout=5) for p in procs] == [42, 42]
        assert logs == ["SIGHUP: reloading host lists and IP sets"]
        daemon.reload()  # dead workers are skipped quietly
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_worker_profiles_follow_the_file(tmp_path: Path) -> None:
    """The worker side end to end without NFQUEUE: targeting -> engine -> watcher."""
    s = Setup(tmp_path)
    started = time.monotonic()
    edit(s.path, "blocked.example\n")
    s.watcher.clock = time.monotonic
    s.watcher._next = 0.0
    assert s.watcher.poll()
    assert s.splits()
    assert time.monotonic() - started < 1.0


def test_restarted_worker_keeps_the_previous_lists_while_a_file_is_broken(
    tmp_path: Path,
) -> None:
    from govpass.errors import ConfigError
    from govpass.runtime.nfqueue_worker import worker_targeting

    path = tmp_path / "hosts.txt"
    path.write_text("blocked.example\n")
    config = load(env={}, flags={"hostlist": str(path)})
    logs: list[str] = []
    daemon = NfqueueService(config, logs.append)
    daemon._start_targeting()
    good = daemon.profiles
    assert good is not None and daemon._events is None  # no auto profile: no pipe
    edit(path, "blocked.example\nbad host\n")
    # The parent's watcher runs on a thread; wait() swaps in what it built.
    until(daemon, lambda: daemon._lists.failures == 1)
    assert daemon.profiles is good, "the parent's copy keeps the last good lists"

    engine = Engine(config.engine_config())
    _, watcher = worker_targeting(config, engine, 1, logs.append, daemon.profiles)
    assert logs[-1] == (
        f'worker 1: hostlist {path} line 2: "bad host" is not a valid entry{HOSTS}; '
        "using the previous lists"
    )
    assert watcher is not None and watcher.log is None, "only worker 0 logs reloads"
    pkt = IP(src="198.51.100.2", dst="203.0.113.9") / TCP(sport=41000, dport=443, flags="PA")
    actions = engine.process(bytes(pkt / Raw(HELLO)), 1.0, object())
    assert actions is not None and any(a.kind == SEND for a in actions)
    with pytest.raises(ConfigError):  # at the first start there is nothing to fall back on
        worker_targeting(config, Engine(config.engine_config()), 0, None, None)

    edit(path, "other.example\n")
    until(daemon, lambda: daemon.profiles is not good)
    reloads = daemon._lists.reloads
    daemon.reload()  # SIGHUP also re-reads the parent's copy (no workers here)
    until(daemon, lambda: daemon._lists.reloads == reloads + 1)
    daemon._list_thread.close()


def until(daemon: NfqueueService, done: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "the parent's list thread did not get there"
        daemon.wait(0.02)
