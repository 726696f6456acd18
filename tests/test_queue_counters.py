"""The queue table from /proc and the count of packets that passed the queues by."""

from __future__ import annotations

from pathlib import Path

import pytest
from govpass.queue_counters import BypassCount, QueueRow, parse_queue_table, read_queue_table

LINE = "  200  10996     3 2  4016     0     0       18  1"


def test_a_line_gives_its_counters() -> None:
    assert parse_queue_table(LINE + "\n  201 12 0 2 65535 4 5 7 1\n") == {
        200: QueueRow(portid=10996, queued=3, queue_dropped=0, user_dropped=0, id_sequence=18),
        201: QueueRow(portid=12, queued=0, queue_dropped=4, user_dropped=5, id_sequence=7),
    }


def test_odd_lines_are_left_out_not_guessed() -> None:
    hostile = [
        "",
        "200",
        "  200 10996 3 2 4016 0 0",  # short: no id_sequence
        "  200 10996 3 2 4016 0 0 x1 1",
        "  200 10996 3 2 4016 0 0 -5 1",
        "  200 10996 3 2 4016 0 0 1e3 1",
        "  200 10996 3 2 4016 0 0 \u0661\u0662 1",  # digits, but not ASCII ones
        "  200 10996 3 2 4016 0 0 " + "9" * 30 + " 1",  # past any kernel counter
        "\x00\x1b]0;x\x07 1 2 3 4 5 6 7 8",
    ]
    assert parse_queue_table("\n".join(hostile)) == {}


def test_an_unreadable_table_is_unknown(tmp_path: Path) -> None:
    assert read_queue_table(str(tmp_path / "missing")) is None
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00" * 100 + LINE.encode())
    assert read_queue_table(str(binary)) == {}


def row(portid: int, seq: int) -> dict[int, QueueRow]:
    return {200: QueueRow(portid, 0, 0, 0, seq)}


def test_rule_packets_no_queue_took_are_counted() -> None:
    count = BypassCount(range(200, 201))
    assert count.observe(None, row(1, 5)) is None  # rule counters unknown: no number
    assert count.observe(5, row(1, 5)) == 0
    assert count.observe(9, row(1, 6)) == 3  # the queue took one of four


def test_a_replaced_worker_keeps_the_count_of_its_queue() -> None:
    count = BypassCount(range(200, 201))
    count.observe(10, row(1, 10))
    count.observe_queues({})  # the worker died: its queue is gone
    assert count.observe(14, {}) == 4  # nobody bound: every packet passed by
    assert count.observe(20, row(2, 6)) == 4  # a new worker, its ids from 1 again
    count.observe_queues(row(3, 1))  # and another, seen without a gap
    assert count.observe(21, row(3, 1)) == 4


def test_the_count_never_falls() -> None:
    count = BypassCount(range(200, 201))
    assert count.observe(10, row(1, 4)) == 6
    # Reinstalled rules count from zero again; a table that could not be read says
    # nothing about the queues.
    assert count.observe(2, None) == 6
    assert count.observe(2, row(1, 6)) == 6
    assert count.observe(3, row(1, 7)) == 6


def test_stats_and_doctor_read_the_same_table_without_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from govpass.backends import nfqueue

    text = LINE + "\n  201 x 0 2 65535 4 5 7 1\nshort line\n"
    monkeypatch.setattr(nfqueue, "read_queue_table", lambda: parse_queue_table(text))
    assert nfqueue.queue_table() == {
        200: {"portid": 10996, "queued": 3, "queue_dropped": 0, "user_dropped": 0}
    }
    monkeypatch.setattr(nfqueue, "read_queue_table", lambda: None)
    assert nfqueue.queue_table() == {}


def test_rules_reinstalled_by_the_daemon_lose_nothing() -> None:
    count = BypassCount(range(200, 201))
    assert count.observe(10, row(1, 4)) == 6
    count.rules_replaced()
    assert count.observe(15, row(1, 4)) == 21  # more than the old count: still a new run
