"""The run directory's lock: how a live govpass daemon is told from a stale file.

Every backend (NFQUEUE, divert, FreeBSD divert sockets) holds a lock on
``daemon.lock`` in its run directory for the whole run and writes its pid into
it. The kernel drops the lock with the process, SIGKILL included, so no file
left behind (a ``daemon.json`` whose pid another process reused) can make a
dead daemon look alive or block the next start.

POSIX uses ``flock``; Windows has no fcntl and uses ``msvcrt.locking`` on one
byte past the pid (Windows byte locks are mandatory: the pid itself must stay
readable by ``govpass stats``).
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import suppress
from pathlib import Path

LOCK_NAME = "daemon.lock"
_WIN_LOCK_OFFSET = 64  # the locked byte, past any pid text
_OPEN_FLAGS = (
    getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
)


# sys.platform, not govpass.host_os, in this module: mypy narrows on it, and the
# branches import modules that exist on one platform only (msvcrt, fcntl).


def _try_lock(fd: int, exclusive: bool) -> bool:
    """True when taken, False when another process holds it."""
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # Windows has no shared lock
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


def _read_pid(fd: int) -> int:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        return int(os.read(fd, 32).decode("ascii").strip() or "-1")
    except (OSError, ValueError):
        return -1


def hold_run_lock(directory: Path) -> int | None:
    """Takes the run directory's lock (held for the whole run) and writes this
    pid into it; the descriptor, or None when a live daemon holds it."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, 0o640)
    for attempt in range(10):  # `govpass stats` holds a shared lock for a moment
        if _try_lock(fd, exclusive=True):
            break
        if attempt == 9:
            os.close(fd)
            return None
        time.sleep(0.02)
    if hasattr(os, "fchmod"):
        os.fchmod(fd, 0o640)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def release_run_lock(fd: int) -> None:
    """Ends the run's hold (closing the descriptor drops the lock)."""
    with suppress(OSError):
        os.close(fd)


def running_daemon(directory: Path) -> int | None:
    """Pid of the live govpass daemon of `directory`, if any: the process holding
    its lock (-1 when its pid cannot be read)."""
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDONLY | _OPEN_FLAGS)
    except OSError:
        return None
    try:
        if not _try_lock(fd, exclusive=False):
            return _read_pid(fd)
        _unlock(fd)
        return None
    finally:
        os.close(fd)


def claim_run_lock(directory: Path) -> int:
    """Makes the run directory (refused when others could change it, see
    govpass.safefile) and takes its lock; BackendError (one line) naming the
    daemon that holds it."""
    from govpass.errors import BackendError

    if sys.platform == "win32":  # no owner uid to check; the directory is the user's choice
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BackendError(
                f"run directory {directory}: cannot create it: {e.strerror}"
            ) from None
    else:
        from govpass.safefile import make_directory

        make_directory(directory, "run directory")  # 0750
    try:
        fd = hold_run_lock(directory)
    except OSError as e:
        raise BackendError(
            f"run directory {directory}: cannot lock {LOCK_NAME}: {e.strerror}"
        ) from None
    if fd is None:
        raise BackendError(
            f"another govpass daemon (pid {running_daemon(directory)}) is already running "
            f"with run directory {directory}; stop it first"
        )
    return fd
