"""A scripted service for the runtime's loop (govpass.runtime.service.run) in tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from govpass.errors import BackendError


class Scripted:
    """A service that records what the runtime asks of it: its splits grow by one a
    tick; `after_tick` runs after each (a scrape), `healthy` is what it says."""

    def __init__(
        self,
        ticks: int = 3,
        fail_start: bool = False,
        reloads: bool = False,
        after_tick: Callable[[], None] = lambda: None,
        healthy: Callable[[], bool] = lambda: True,
    ) -> None:
        self.calls: list[str] = []
        self.ticks = ticks
        self.fail_start = fail_start
        self.reloads = reloads
        self.after_tick = after_tick
        self._healthy = healthy
        self.counter = 0

    def reloader(self) -> Callable[[], None] | None:
        return (lambda: self.calls.append("reload")) if self.reloads else None

    def start(self) -> None:
        self.calls.append("start")
        if self.fail_start:
            raise BackendError("cannot open the capture")

    def running_line(self) -> str:
        return "running: scripted"

    def serve(self, stopped: Callable[[], bool], tick: Callable[[], None]) -> None:
        self.calls.append("serve")
        for _ in range(self.ticks):
            if stopped():
                break
            self.counter += 1
            tick()
            self.after_tick()

    def stats(self) -> dict[str, Any]:
        self.calls.append("stats")
        return {"splits": self.counter}

    def stop(self) -> dict[str, Any]:
        self.calls.append("stop")
        return {"splits": self.counter}

    def status_line(self, stats: dict[str, Any]) -> str:
        return f"splits={stats['splits']}"

    def healthy(self) -> bool:
        return self._healthy()
