"""The one loop every backend runs under: signals, start, status, stop.

A backend's run is a :class:`Service`. :func:`run` installs the stop and reload
signals (:mod:`.signals`), starts the service, writes its state files once
before it says it runs (so a planted name in the run directory is replaced at
once, and ``govpass stats`` has something to read), then lets the service
serve until a stop is asked for, refreshing the status every stats interval (a
live table on a terminal, a changed-counters line in a log otherwise). Whatever
ends the run (a signal, the caller's ``should_stop``, an error), the service's
``stop`` runs and the last counters go to the log.

Around that: with ``metrics`` set (the ``--metrics`` setting), a thread serves the
latest counters to Prometheus (:mod:`.metrics`); under systemd's ``Type=notify``
the loop says when it is ready, its counters line, when it stops, and pets the
watchdog while :meth:`Service.healthy` (:mod:`.sd_notify`).

A stop signal only sets a flag the service polls: an exception raised at a
random point (in the middle of a state file's rename, a rule re-install or a
worker's restart) would leave that half done and the clean-up to trip over it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, Protocol

from govpass.runtime import metrics as metrics_mod
from govpass.runtime.sd_notify import Notifier
from govpass.runtime.signals import stop_on_signals
from govpass.runtime.status import ChangeLog, table


class Service(Protocol):
    """One backend's run, as :func:`run` drives it."""

    def reloader(self) -> Callable[[], None] | None:
        """What SIGHUP does: re-read the host lists; None where it stops the run."""

    def start(self) -> None:
        """Claims the run directory, opens the capture, installs what it needs;
        raises GovpassError (one line) when it cannot."""

    def running_line(self) -> str:
        """The log line that says the service runs, and with what."""

    def serve(self, stopped: Callable[[], bool], tick: Callable[[], None]) -> None:
        """Runs until ``stopped()``; calls ``tick()`` at least once a stats interval."""

    def stats(self) -> dict[str, Any]:
        """Writes the state files and returns the counters of the moment."""

    def stop(self) -> dict[str, Any]:
        """Releases everything :meth:`start` took (rules, capture, held packets,
        the run directory); returns the last counters. Safe after a failed start."""

    def status_line(self, stats: dict[str, Any]) -> str:
        """The counters as one key=value line."""

    def healthy(self) -> bool:
        """Whether the service does its work now (systemd's watchdog is petted only
        then): its workers alive and running; True for a service without workers."""


def run(
    service: Service,
    log: Callable[[str], None],
    stats_interval: float,
    should_stop: Callable[[], bool] | None = None,
    interactive: bool | None = None,
    metrics: str = "",
    notifier: Notifier | None = None,
) -> dict[str, Any]:
    """Runs ``service`` until a stop signal or ``should_stop()`` (a Windows service's
    stop request); returns its last counters, which are also logged. ``metrics``:
    the ``metrics`` setting's value ("": no server); ``notifier``: systemd's socket
    (default: from the environment)."""
    if interactive is None:
        interactive = sys.stdout.isatty()
    notify = Notifier.from_env() if notifier is None else notifier
    exporter: metrics_mod.MetricsServer | None = None
    try:
        with stop_on_signals(service.reloader()) as signalled:

            def stopped() -> bool:
                # Polled often by every service's loop (at least every 0.25 s, so also
                # between ticks a stats interval apart): a loop that polls is alive.
                notify.pet(service.healthy)
                return signalled() or (should_stop is not None and should_stop())

            service.start()
            stats = service.stats()
            exporter = metrics_mod.serve(metrics, stats)
            if exporter is not None:
                log(f"metrics: {exporter.url}")
            log(service.running_line())
            notify.ready(service.status_line(stats))
            live: Any
            if interactive:
                from rich.live import Live

                live = Live(table(stats), refresh_per_second=2)
            else:
                live = nullcontext()
            changes = ChangeLog(service.status_line)
            due = time.monotonic() + stats_interval

            def tick() -> None:
                nonlocal due
                now = time.monotonic()
                if now < due:
                    return
                due = now + stats_interval
                current = service.stats()
                if exporter is not None:
                    exporter.update(current)
                notify.status(service.status_line(current))
                if interactive:
                    live.update(table(current))
                elif text := changes.due(current):
                    log(text)

            with live:
                service.serve(stopped, tick)
            if signalled():  # not when the caller's should_stop() ended it
                log("stopping")
    except KeyboardInterrupt:  # only before the handlers are in place
        log("stopping")
    finally:
        notify.stopping()
        if exporter is not None:
            exporter.close()
        try:
            final = service.stop()
        finally:
            notify.close()
    log(service.status_line(final))
    return final
