"""govpass.backends.nfqueue: the worker's timer (fast while packets are held, slow
while idle)."""

from __future__ import annotations

from types import SimpleNamespace

from govpass.backends.nfqueue import IDLE_TICK, NfqueueWorker


def worker(held: int, tick: float = 0.05) -> NfqueueWorker:
    w = NfqueueWorker.__new__(NfqueueWorker)  # no queue, no sockets: the timer only
    w.tick, w.idle_tick = tick, max(tick, IDLE_TICK)
    w.engine = SimpleNamespace(held_packets=held)  # type: ignore[assignment]
    return w


def test_idle_worker_ticks_slowly() -> None:
    assert worker(held=0)._next_tick(10.0, 10.0) == 10.0 + IDLE_TICK


def test_held_packets_tick_at_the_collect_timeout_pace() -> None:
    assert worker(held=1)._next_tick(10.0, 10.0) == 10.05


def test_a_packet_held_before_the_slow_tick_brings_it_forward() -> None:
    # next tick 0.2 s away (idle timer), a packet is now held: due in one tick
    assert worker(held=1)._next_tick(10.0, 10.2) == 10.05


def test_a_tick_not_yet_due_is_kept() -> None:
    assert worker(held=0)._next_tick(10.0, 10.1) == 10.1
    assert worker(held=1)._next_tick(10.0, 10.01) == 10.01


def test_a_long_collect_timeout_keeps_its_own_tick() -> None:
    w = worker(held=0, tick=0.5)
    assert w.idle_tick == 0.5 and w._next_tick(10.0, 10.0) == 10.5
