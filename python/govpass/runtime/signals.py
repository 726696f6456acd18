"""How a running govpass is asked to stop or to re-read its lists, on every
platform and backend: SIGINT, SIGTERM (and SIGBREAK on Windows) stop it, SIGHUP
re-reads the host lists, or stops it where there is nothing to re-read.

The handlers are installed whatever disposition the process inherited. A
process started by ``nohup``, by ``&`` in a non-interactive shell or from a
script inherits SIGINT as ignored, and Python then installs no Ctrl-C handler
of its own: a daemon relying on Python's default would ignore SIGINT and could
only be stopped by a signal that skips the clean-up. The one exception is a
SIGHUP that would stop the process: when it was inherited as ignored (``nohup``)
it stays ignored, because ignoring the terminal's hang-up is what the user
asked nohup for.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGBREAK")  # SIGBREAK: Ctrl-Break on Windows


@contextmanager
def stop_on_signals(
    on_reload: Callable[[], None] | None = None, *, interrupt: bool = False
) -> Iterator[Callable[[], bool]]:
    """Yields a callable that tells whether a stop was asked for.

    ``interrupt``: also raise KeyboardInterrupt in the main thread, for callers
    whose clean-up path is an exception handler. The others poll the flag: an
    exception in the middle of a batch could lose a packet that was received but
    not yet sent back. Outside the main thread (a Windows service's worker thread)
    no handler can be set; the caller's own stop callable is then the only way."""
    requested: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        requested.append(signum)
        if interrupt:
            raise KeyboardInterrupt

    def hup(signum: int, frame: Any) -> None:
        assert on_reload is not None
        on_reload()

    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (getattr(signal, n) for n in STOP_SIGNALS if hasattr(signal, n)):
            old[sig] = signal.signal(sig, stop)
        if hasattr(signal, "SIGHUP"):
            if on_reload is not None:
                old[signal.SIGHUP] = signal.signal(signal.SIGHUP, hup)
            elif signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
                old[signal.SIGHUP] = signal.signal(signal.SIGHUP, stop)
    try:
        yield lambda: bool(requested)
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


@contextmanager
def signals_raise(on_reload: Callable[[], None] | None = None) -> Iterator[None]:
    """:func:`stop_on_signals` for a clean-up path written as ``except
    KeyboardInterrupt`` (the Linux daemon, the lab): every stop signal runs it."""
    with stop_on_signals(on_reload, interrupt=True):
        yield
