"""The watchdog: heartbeats in shared memory, the parent's check that kills and
restarts a worker that stopped running (a real forked process here), and the
counters of replaced workers kept in the aggregate."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from govpass.config import load
from govpass.errors import ConfigError
from govpass.runtime.nfqueue_service import NfqueueService, WorkerHandle
from govpass.runtime.state import RETIRED, WORKERS, aggregate
from govpass.watchdog import Heartbeats, check_interval

CTX = mp.get_context("fork")


def test_a_slot_is_stale_only_past_the_bound() -> None:
    beats = Heartbeats(2, CTX)
    assert beats.age(0) == float("inf")  # never beat
    beats.beat(0, now=10.0)
    beats.beat(1, now=10.9)
    assert beats.hung([0, 1], 1.0, now=11.5) == [0]
    assert beats.hung([0, 1], 0.0, now=99.0) == []  # 0: off
    assert beats.age(1, now=11.0) == pytest.approx(0.1)


def test_a_beat_in_a_forked_child_is_seen_by_the_parent() -> None:
    beats = Heartbeats(1, CTX)
    child = CTX.Process(target=beats.beat, args=(0,))
    child.start()
    child.join(5)
    assert beats.age(0) < 5.0


def test_the_parent_checks_several_times_per_bound() -> None:
    assert check_interval(1.0) == pytest.approx(0.2)
    assert check_interval(10.0) == 0.25
    assert check_interval(0.0) == 1.0  # off: only dead workers, once a second


@pytest.mark.parametrize("value", ["0.1", "0.49", "-1", "nan", "inf", "x", "3601"])
def test_worker_timeout_rejects_values_below_the_loop_period(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^invalid worker-timeout: .*accepted"):
        load(env={}, flags={"worker-timeout": value})


@pytest.mark.parametrize(("value", "expected"), [("0", 0.0), ("0.5", 0.5), ("2", 2.0)])
def test_worker_timeout_accepts_0_and_the_bound(value: str, expected: float) -> None:
    assert load(env={}, flags={"worker-timeout": value}).worker_timeout == expected
    assert load(env={}).worker_timeout == 1.0


def _stuck(beats: Heartbeats) -> None:
    beats.beat(0)
    time.sleep(60)  # never beats again: a hung packet loop


class Restarts:
    """A NfqueueService whose workers are real forked processes that beat once and hang."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, timeout: str) -> None:
        monkeypatch.setenv("GOVPASS_RUN_DIR", str(tmp_path))
        self.logs: list[str] = []
        config = load(env={}, flags={"workers": "1", "worker-timeout": timeout})
        self.daemon = NfqueueService(config, self.logs.append)
        self.started: list[Any] = []
        monkeypatch.setattr(self.daemon, "_start_worker", self.start)

    def start(self, index: int) -> WorkerHandle:
        proc = CTX.Process(target=_stuck, args=(self.daemon.heartbeats,), daemon=True)
        proc.start()
        self.started.append(proc)
        self.daemon.heartbeats.beat(index)
        return WorkerHandle(index, proc)

    def close(self) -> None:
        for p in self.started:
            if p.is_alive():
                p.kill()
            p.join(5)


def test_a_hung_worker_is_killed_restarted_logged_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = Restarts(tmp_path, monkeypatch, "0.5")
    try:
        r.daemon.workers = [r.start(0)]
        (tmp_path / WORKERS).mkdir(exist_ok=True)
        (tmp_path / WORKERS / "worker-0.json").write_text(
            json.dumps({"queue": 200, "flows": 7, "splits": 5, "flows_now": 3,
                        "fail_open": {"timeout": 2}})
        )  # fmt: skip
        r.daemon.check_workers()
        assert len(r.started) == 1, "replaced before the bound"
        started = time.monotonic()
        while len(r.started) == 1 and time.monotonic() - started < 3:
            r.daemon.wait(0.1)  # the run loop's wait checks the heartbeats itself
        assert len(r.started) == 2, r.logs
        assert time.monotonic() - started < 0.5 + 0.2 + 0.5
        old = r.started[0]
        assert not old.is_alive() and old.exitcode == -signal.SIGKILL
        assert r.daemon.workers[0].process is r.started[1]
        assert r.daemon.workers[0].restarts == 1
        assert len([m for m in r.logs if "has not run for" in m]) == 1, r.logs
        assert f"worker 0 (pid {old.pid}) has not run for" in r.logs[0]
        retired = json.loads((tmp_path / RETIRED).read_text())
        assert retired == {"watchdog_restarts": 1, "worker_restarts": 1, "flows": 7,
                           "splits": 5, "fail_open": {"timeout": 2}}  # fmt: skip
        assert not (tmp_path / WORKERS / "worker-0.json").exists()
        (tmp_path / WORKERS).mkdir(exist_ok=True)
        (tmp_path / WORKERS / "worker-0.json").write_text(json.dumps({"queue": 200, "flows": 1}))
        total = aggregate(tmp_path)
        assert total["flows"] == 8 and total["splits"] == 5 and total["workers"] == 1
        assert total["watchdog_restarts"] == 1 and total["fail_open"] == {"timeout": 2}
    finally:
        r.close()


def test_worker_timeout_0_leaves_a_hung_worker_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = Restarts(tmp_path, monkeypatch, "0")
    try:
        r.daemon.workers = [r.start(0)]
        r.daemon.wait(1.2)
        r.daemon.check_workers()
        assert len(r.started) == 1 and r.started[0].is_alive()
        os.kill(r.started[0].pid, signal.SIGKILL)  # a dead worker is still replaced
        r.started[0].join(5)
        r.daemon.check_workers()
        assert len(r.started) == 2
        assert "exited (code -9); restarting" in r.logs[-1]
        assert json.loads((tmp_path / RETIRED).read_text())["watchdog_restarts"] == 0
    finally:
        r.close()


def test_healthy_while_every_worker_is_alive_and_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = Restarts(tmp_path, monkeypatch, "0.5")
    try:
        assert not r.daemon.healthy()  # no workers yet
        r.daemon.workers = [r.start(0)]
        assert r.daemon.healthy()
        time.sleep(0.6)  # its loop has not run for longer than worker-timeout
        assert not r.daemon.healthy()
        r.daemon.check_workers()  # replaced
        assert len(r.started) == 2 and r.daemon.healthy()
        r.daemon.workers[0].process.kill()
        r.daemon.workers[0].process.join(5)
        assert not r.daemon.healthy()  # dead
    finally:
        r.close()
