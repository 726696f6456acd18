"""The runtime's loop (govpass.runtime.service.run) over a scripted service."""

from __future__ import annotations

import signal
import sys

import pytest
from govpass.errors import BackendError
from govpass.runtime.service import run
from scripted import Scripted


def test_state_is_written_before_the_service_says_it_runs() -> None:
    svc = Scripted(ticks=0)
    log: list[str] = []
    final = run(svc, log.append, stats_interval=0.0, interactive=False)
    assert svc.calls == ["start", "stats", "serve", "stop"]
    assert log == ["running: scripted", "splits=0"]
    assert final == {"splits": 0}


def test_ticks_refresh_the_stats_once_an_interval_and_log_only_changes() -> None:
    svc = Scripted(ticks=3)
    log: list[str] = []
    run(svc, log.append, stats_interval=0.0, interactive=False)
    assert svc.calls.count("stats") == 4  # once at the start, once a tick
    assert log == ["running: scripted", "splits=1", "splits=2", "splits=3", "splits=3"]


def test_a_long_interval_skips_the_refresh() -> None:
    svc = Scripted(ticks=5)
    run(svc, lambda _m: None, stats_interval=3600.0, interactive=False)
    assert svc.calls.count("stats") == 1


def test_should_stop_ends_the_run_without_a_stopping_line() -> None:
    svc = Scripted(ticks=100)
    log: list[str] = []
    run(svc, log.append, 0.0, should_stop=lambda: svc.counter >= 2, interactive=False)
    assert svc.counter == 2 and "stopping" not in log and svc.calls[-1] == "stop"


def test_a_failed_start_still_stops_and_raises_its_one_line() -> None:
    svc = Scripted(fail_start=True)
    log: list[str] = []
    with pytest.raises(BackendError, match="cannot open the capture"):
        run(svc, log.append, 0.0, interactive=False)
    assert svc.calls == ["start", "stop"]
    assert log == []


@pytest.mark.skipif(sys.platform == "win32", reason="no SIGHUP")
def test_signals_reach_the_service_and_are_restored() -> None:
    svc = Scripted(ticks=100, reloads=True)
    log: list[str] = []
    before = signal.getsignal(signal.SIGTERM)

    def should_stop() -> bool:
        if svc.counter == 1:
            signal.raise_signal(signal.SIGHUP)
        if svc.counter == 3:
            signal.raise_signal(signal.SIGTERM)
        return False

    run(svc, log.append, 3600.0, should_stop=should_stop, interactive=False)
    assert svc.calls.count("reload") == 1
    assert 3 <= svc.counter <= 4 and "stopping" in log  # asked after the third tick
    assert signal.getsignal(signal.SIGTERM) is before
