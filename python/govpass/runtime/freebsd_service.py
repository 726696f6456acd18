"""`govpass run` on FreeBSD: a divert(4) socket and ipfw or pf rules under the
runtime's loop (:mod:`govpass.runtime.service`).

The socket is bound before the rules go in and closed after they are out: a
diverted packet with no reader is dropped by the kernel.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from govpass.backends.freebsd import (
    DivertSocket,
    DivertSocketWorker,
    FreeBSDOptions,
    open_divert_socket,
    options_from,
    rule_spec,
    unavailable_reason,
)
from govpass.errors import BackendError, GovpassError
from govpass.rules import bsd
from govpass.runtime import service
from govpass.runtime.run_lock import claim_run_lock, release_run_lock
from govpass.runtime.state import DAEMON_STATE, run_dir, write_json_atomic
from govpass.runtime.status import line, running


class FreeBSDService:
    """The divert socket's run (see govpass.runtime.service.Service). `sock` and
    `runner` (the firewall commands) are injectable, for tests."""

    def __init__(
        self,
        config: Any,
        options: FreeBSDOptions,
        log: Callable[[str], None],
        sock: DivertSocket | None = None,
        runner: Any = None,
    ) -> None:
        self.config = config
        self.options = options
        self.log = log
        self.spec = rule_spec(config, options)  # invalid settings fail before anything opens
        self.directory = run_dir()
        self.runner = runner
        self._sock = sock
        self.worker: DivertSocketWorker | None = None
        self._installed = False
        self._lock: int | None = None
        self._final: dict[str, Any] | None = None

    def reloader(self) -> Callable[[], None] | None:
        return None  # no host lists to re-read here: SIGHUP stops the run

    def start(self) -> None:
        self._lock = claim_run_lock(self.directory)  # a second run changes nothing
        sock = self._sock
        if sock is None:
            reason = unavailable_reason()
            if reason:
                raise BackendError(f"divert backend unusable: {reason}")
            sock = open_divert_socket(self.options.divert_port)
        self.worker = DivertSocketWorker(sock, self.config.engine_config())
        with suppress(OSError):
            write_json_atomic(
                self.directory / DAEMON_STATE,
                {"pid": os.getpid(), "started": time.time(), "backend": "divert"},
            )
        firewall = self.options.firewall
        if firewall is not None:
            result = bsd.install(self.spec, firewall, self.runner)
            self._installed = True
            self.log(f"{firewall} rules installed ({len(result.commands)} commands)")

    def running_line(self) -> str:
        return running(self.config, f"backend=divert port={self.options.divert_port}")

    def serve(self, stopped: Callable[[], bool], tick: Callable[[], None]) -> None:
        assert self.worker is not None
        self.worker.run(stopped, tick)

    def stats(self) -> dict[str, Any]:
        if self.worker is None:
            return {}
        stats = self.worker.stats()
        with suppress(OSError):
            write_json_atomic(self.directory / "worker-0.json", {"queue": -1, **stats})
        return stats

    def stop(self) -> dict[str, Any]:
        """Rules out first (nothing new is diverted), then the held packets back, then
        the socket closed; a rule removal that failed is raised after the rest."""
        if self._final is not None:
            return self._final
        errors: list[str] = []
        try:
            if self._installed and self.options.firewall is not None:
                try:
                    bsd.remove(self.spec, self.options.firewall, self.runner)
                    self._installed = False
                    self.log("rules removed")
                except GovpassError as e:
                    errors.append(str(e))
            if self.worker is not None:
                try:
                    self.worker.drain()
                finally:
                    self.worker.close()
            self._final = self.stats()
            if self._lock is not None:
                (self.directory / DAEMON_STATE).unlink(missing_ok=True)
        finally:
            if self._lock is not None:
                release_run_lock(self._lock)
                self._lock = None
        if errors:
            raise GovpassError("; ".join(errors))
        return self._final

    def healthy(self) -> bool:
        return True  # no workers of its own: healthy while its loop runs (it asks)

    def status_line(self, stats: dict[str, Any]) -> str:
        extra = [f"{k}={int(stats.get(k, 0))}" for k in ("divert_received", "inject_errors")]
        return " ".join([line(stats), *extra])


def run_freebsd(
    config: Any,
    log: Callable[[str], None],
    options: FreeBSDOptions | None = None,
    sock: DivertSocket | None = None,
    runner: Any = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Bind, install rules, run, clean up; returns the final counters."""
    run = FreeBSDService(config, options or options_from(config), log, sock, runner)
    return service.run(run, log, config.stats_interval, should_stop, metrics=config.metrics)
