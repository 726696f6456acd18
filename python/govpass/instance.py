"""One govpass daemon per network namespace, and a way to find it.

The rules govpass installs are per network namespace (one table, one set of
chains), whatever the run directory: a second daemon would replace the first
one's rules and remove them all when it exits. A daemon therefore binds an
abstract AF_UNIX socket named after govpass and its namespace: the kernel
keeps abstract names per network namespace and frees one when the last
process holding it exits, SIGKILL included, so there is nothing stale to
clean up. `govpass rules` asks the same socket whether a daemon owns the
rules before changing them.

Anyone in the namespace can bind an abstract name; the refusal names the pid
and uid of the holder, so an impostor is seen for what it is.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

from govpass.errors import BackendError

BACKLOG = 64  # lookups between two drain() calls that still learn the pid


@dataclass(frozen=True)
class Holder:
    pid: int
    uid: int


def _netns_id() -> str:
    try:
        return str(os.stat("/proc/self/ns/net").st_ino)
    except OSError:
        return "default"  # no /proc: the name is still per namespace


def socket_name() -> bytes:
    return b"\0govpass-daemon-netns-" + _netns_id().encode()


def claim() -> socket.socket:
    """The namespace's daemon socket, bound and listening; BackendError (one
    line) when another process holds it. Keep the socket open for the run."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(socket_name())
        sock.listen(BACKLOG)  # only so that others can read the holder's pid (SO_PEERCRED)
        sock.setblocking(False)
        # Workers are forked: without this an orphaned worker would keep the name,
        # and `govpass rules remove` after a crash would be refused.
        os.register_at_fork(after_in_child=sock.close)
    except OSError as e:
        sock.close()
        if e.errno != errno.EADDRINUSE:
            raise BackendError(f"cannot claim this network namespace: {e.strerror}") from None
        holder = find()
        who = f"pid {holder.pid}, uid {holder.uid}" if holder and holder.pid > 0 else "pid unknown"
        raise BackendError(
            f"another govpass daemon ({who}) is already running in this network namespace; "
            "two would replace each other's rules: stop it first"
        ) from None
    return sock


def find() -> Holder | None:
    """The process holding this namespace's daemon socket, or None."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    try:
        sock.connect(socket_name())
    except BlockingIOError:  # bound and listening, its backlog full
        return Holder(-1, -1)
    except OSError:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
        return Holder(pid, uid)
    finally:
        sock.close()


def drain(sock: socket.socket) -> None:
    """Closes the connections lookups left queued (call now and then), so later
    lookups still get through to read the pid."""
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        conn.close()


def refuse_if_running(action: str, force: bool) -> Holder | None:
    """For `govpass rules`: BackendError (one line) when a daemon in this network
    namespace owns the rules and `force` is not set; else the daemon there, if any."""
    holder = find()
    if holder is None or force:
        return holder
    who = f"pid {holder.pid}" if holder.pid > 0 else "pid unknown"
    raise BackendError(
        f"a govpass daemon ({who}) is running in this network namespace and owns the rules; "
        f"stop it before you {action} them, or pass --force (the daemon puts its own rules "
        "back within seconds)"
    )
