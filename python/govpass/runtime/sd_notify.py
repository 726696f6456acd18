"""systemd's service notifications (``Type=notify``), written here: one datagram
to ``$NOTIFY_SOCKET`` per message, no library.

The runtime's loop (:mod:`.service`) sends ``READY=1`` once the service runs and
has its first counters, ``STATUS=`` with the counters line, ``STOPPING=1`` when
it stops, and, when systemd set ``$WATCHDOG_USEC`` (``WatchdogSec=``) for this
process, ``WATCHDOG=1`` at most every half of that period while the service
says it is healthy. Without ``$NOTIFY_SOCKET`` every call does nothing; a send
that fails (no listener, a full queue) is ignored: the daemon's work does not
depend on systemd hearing it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

MAX_STATUS = 400  # characters of a STATUS= line


def socket_address(value: str) -> str | None:
    """``$NOTIFY_SOCKET`` as an AF_UNIX address: a path, or an abstract name
    (``@name``, NUL-prefixed for the kernel); None for anything else."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def safe_status(line: str, limit: int = MAX_STATUS) -> str:
    """A status for ``STATUS=``: one line of printable ASCII ('?' for the rest,
    a newline would start another assignment), at most `limit` characters."""
    return "".join(c if " " <= c <= "~" else "?" for c in line[:limit])


def watchdog_period(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds of ``$WATCHDOG_USEC`` when it is meant for this process (sd_watchdog_enabled:
    ``$WATCHDOG_PID``, when set, names it), else None."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not (usec.isascii() and usec.isdigit()) or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 1_000_000


class Notifier:
    """Sends service notifications to one socket; all a no-op when `address` is None."""

    def __init__(
        self,
        address: str | None,
        watchdog: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.watchdog_period = watchdog if address is not None else None
        self.clock = clock
        self._sock: socket.socket | None = None
        self._petted: float | None = None
        self._status: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(socket_address(env.get("NOTIFY_SOCKET", "")), watchdog_period(env))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, message: str) -> bool:
        """One datagram; whether it left (False when off, or when the send failed)."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)  # a listener that does not read cannot stall the loop
            self._sock.sendto(message.encode("ascii", "replace"), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        self._status = safe_status(status)
        return self.send(f"READY=1\nSTATUS={self._status}")

    def status(self, line: str) -> bool:
        """``STATUS=`` when it changed since the last one."""
        status = safe_status(line)
        if status == self._status:
            return False
        self._status = status
        return self.send(f"STATUS={status}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def pet(self, healthy: Callable[[], bool]) -> bool:
        """``WATCHDOG=1`` when half the watchdog period passed since the last one
        and ``healthy()``; cheap to call often (asks `healthy` only when due)."""
        if self.watchdog_period is None:
            return False
        now = self.clock()
        if self._petted is not None and now - self._petted < self.watchdog_period / 2:
            return False
        if not healthy():
            return False
        self._petted = now
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
