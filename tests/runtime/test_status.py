"""Counter rendering for logs: lines only on change, never an empty fail_open."""

from __future__ import annotations

from govpass.runtime.status import ChangeLog, line

IDLE = {"flows": 3, "splits": 2, "packets": 9, "fail_open": {}}


def test_no_empty_fail_open() -> None:
    assert "fail_open" not in line(IDLE)
    assert line({**IDLE, "fail_open": {"timeout": 0}}).endswith("packets=9")
    assert line({**IDLE, "fail_open": {"timeout": 2, "gap": 1}}).endswith(
        "fail_open=gap:1,timeout:2"
    )


def test_an_idle_daemon_logs_once_per_idle_interval() -> None:
    now = [0.0]
    log = ChangeLog(idle_interval=600.0, clock=lambda: now[0])
    lines = []
    for _ in range(43_200):  # a day at the default 2 s stats interval
        if text := log.due(IDLE):
            lines.append(text)
        now[0] += 2.0
    assert len(lines) == 144  # one every 10 minutes
    assert set(lines) == {line(IDLE)}


def test_a_change_is_logged_at_once() -> None:
    now = [0.0]
    log = ChangeLog(idle_interval=600.0, clock=lambda: now[0])
    assert log.due(IDLE) == line(IDLE)
    now[0] = 2.0
    assert log.due(IDLE) is None
    busier = {**IDLE, "splits": 3}
    assert log.due(busier) == line(busier)
    now[0] = 4.0
    assert log.due(busier) is None
    assert log.due({**busier, "fail_open": {"timeout": 1}}) is not None
