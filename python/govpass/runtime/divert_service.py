"""`govpass run --backend divert`: one divert worker under the runtime's loop.

There is nothing to install or remove around it: the capture lives and dies
with the handle (WinDivert's driver state, or libebpfdivert's TC programs); at
start the leftovers of crashed runs are detached
(:mod:`govpass.backends.divert_leftovers`).

One worker only: WinDivert cannot spread a filter's flows over several
handles by flow hash, and one flow must always meet one engine.

SIGINT/SIGTERM stop it; SIGHUP re-reads the host lists (when profiles are
configured). Stats go where the NFQUEUE daemon puts them (``GOVPASS_RUN_DIR``:
``daemon.json`` + ``worker-0.json``), so ``govpass stats`` reads them alike.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from govpass import host_os
from govpass.backends import divert
from govpass.backends.divert_leftovers import clean_leftovers
from govpass.config import Config
from govpass.errors import BackendError, ConfigError
from govpass.runtime import service
from govpass.runtime.run_lock import claim_run_lock, release_run_lock
from govpass.runtime.state import (
    DAEMON_STATE,
    STRATEGY_STATS,
    jsonable,
    run_dir,
    write_json_atomic,
)
from govpass.runtime.status import line, running
from govpass.strategy import config_start, ladder
from govpass.strategy_learner import DEFAULT_SCOPE, ProfileMixer, StrategyKeeper, default_part

DIVERT_KEYS = ("divert_diverted", "divert_queue_full", "divert_ringbuf_full", "divert_too_big")


def status_line(stats: dict[str, Any]) -> str:
    """The NFQUEUE daemon's status line plus the divert handle's own counters:
    packets the kernel diverted (before the exact filter), queue drops, ring-full
    passes (libebpfdivert lets packets through when its ring is full), too big."""

    extra = [f"{k}={int(stats[k])}" for k in DIVERT_KEYS if k in stats]
    return " ".join([line(stats), *extra])


class LocalStrategies:
    """--strategy auto in the one divert process: the engine's verdicts go straight
    to the keeper, and what it learned straight back to the engine's profiles (the
    NFQUEUE daemon passes both through a pipe and the state file instead)."""

    def __init__(self, keeper: StrategyKeeper, worker: divert.DivertWorker, start: Any) -> None:
        self.keeper = keeper
        self.worker = worker
        self._checked = time.monotonic()
        self.mixer = ProfileMixer([default_part(start)], self._set)
        self.mixer.learned(keeper.scopes())

    def _set(self, profiles: list[Any]) -> None:
        with self.worker.lock:
            self.worker.engine.set_profiles(profiles)

    def tick(self) -> None:
        with self.worker.lock:
            events = self.worker.engine.take_events()
        changed = self.keeper.observe(events)
        now = time.monotonic()
        if now >= self._checked + 1.0:  # expiries and outside changes: once a second
            self._checked = now
            changed |= self.keeper.tick()
        if changed:
            self.mixer.learned(self.keeper.scopes())


def _strategies(
    config: Config, worker: divert.DivertWorker, log: Callable[[str], None]
) -> LocalStrategies | None:
    """The learner of `--strategy auto` without lists; None otherwise (auto profiles
    of host lists keep their configured split here: only nfqueue learns per profile)."""
    if not divert.learns_here(config):
        return None
    start = config_start(config)
    keeper = StrategyKeeper(
        Path(config.strategy_state),
        {DEFAULT_SCOPE: start},
        ladder(config.strategy_ladder),
        config.strategy_unfixable_time,
        log,
    )
    return LocalStrategies(keeper, worker, start)


class DivertService:
    """The divert worker's run (see govpass.runtime.service.Service)."""

    def __init__(self, config: Config, log: Callable[[str], None]) -> None:
        self.config = config
        self.log = log
        self.worker = divert.DivertWorker(config)  # validates filter, queue settings and lists
        profiles = self.worker.watch_lists(log)
        self.watching = profiles is not None
        if profiles is not None:
            log(f"profiles: {profiles}")
        self.directory = run_dir()
        self.strategies: LocalStrategies | None = None
        self._lock: int | None = None
        self._final: dict[str, Any] | None = None

    def reloader(self) -> Callable[[], None] | None:
        return self.worker.request_reload if self.watching else None

    def start(self) -> None:
        self._lock = claim_run_lock(self.directory)  # before the handle: a second run opens nothing
        (self.directory / STRATEGY_STATS).unlink(missing_ok=True)
        self.strategies = _strategies(self.config, self.worker, self.log)  # a bad state dir: first
        clean_leftovers(self.log)
        self.worker.open()
        for old in self.directory.glob("worker-*.json"):
            old.unlink(missing_ok=True)
        write_json_atomic(
            self.directory / DAEMON_STATE,
            {
                "pid": os.getpid(),
                "started": time.time(),
                "backend": "divert",
                "config": jsonable(self.config.as_dict()),
            },
        )
        q = self.worker.queue_applied
        self.log(
            f"divert handle open ({divert.implementation()}): filter {self.worker.filter!r}; "
            f"queue-len={q['queue-len']} queue-time={q['queue-time']}ms "
            f"queue-size={q['queue-size']}"
        )

    def running_line(self) -> str:
        return running(self.config, f"strategy={self.config.strategy}", "backend=divert workers=1")

    def serve(self, stopped: Callable[[], bool], tick: Callable[[], None]) -> None:
        def on_tick() -> None:
            if self.strategies is not None:
                self.strategies.tick()
            tick()

        self.worker.run(stopped, on_tick)
        if self.worker.error:
            raise BackendError(self.worker.error)
        self.log("stopped: held packets released, divert handle closed")

    def stats(self) -> dict[str, Any]:
        stats = self.worker.stats()
        with suppress(OSError):
            write_json_atomic(
                self.directory / "worker-0.json",
                {"backend": "divert", "filter": self.worker.filter, **stats},
            )
            if self.strategies is not None:
                write_json_atomic(self.directory / STRATEGY_STATS, self.strategies.keeper.stats())
        return stats

    def stop(self) -> dict[str, Any]:
        if self._final is not None:
            return self._final
        if self._lock is None:  # refused before the run directory was ours: nothing opened
            return {}
        try:
            if self.worker.handle is not None:  # an error before run() closed it
                self.worker.close()
            self._final = self.stats()
            (self.directory / DAEMON_STATE).unlink(missing_ok=True)
        finally:
            release_run_lock(self._lock)
            self._lock = None
        return self._final

    def healthy(self) -> bool:
        return True  # no workers of its own: healthy while its loop runs (it asks)

    def status_line(self, stats: dict[str, Any]) -> str:
        return status_line(stats)


def run_divert(
    config: Config,
    log: Callable[[str], None],
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """The divert daemon: runs until SIGINT/SIGTERM or `should_stop()` (a Windows
    service's stop request), then releases every held packet and closes."""
    if config.block_quic == "listed":
        raise ConfigError(
            "invalid block-quic: 'listed' needs the nfqueue backend "
            "(the divert backend captures TCP only)",
            field="block-quic",
        )
    if host_os.is_freebsd():
        from govpass.runtime import freebsd_service

        if config.strategy == "auto":
            raise ConfigError(
                "strategy auto: not supported by the FreeBSD divert backend yet (its ipfw "
                "rules divert no replies, which the verdicts need; accepted there: "
                "strategy fixed)",
                field="strategy",
            )
        freebsd_service.run_freebsd(config, log, should_stop=should_stop)
        return
    if not (host_os.is_linux() or host_os.is_windows()):
        raise BackendError(
            f"backend divert runs on Windows, Linux and FreeBSD only, not {host_os.platform_text()}"
        )
    reason = divert.unavailable_reason()
    if reason:
        raise BackendError(f"divert backend unusable: {reason}")
    divert.check_privileges()
    if config.workers > 1:
        log(f"workers={config.workers} ignored: the divert backend runs one worker")
    service.run(
        DivertService(config, log), log, config.stats_interval, should_stop, metrics=config.metrics
    )
