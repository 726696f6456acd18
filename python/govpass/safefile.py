"""Files govpass writes, written so nobody else's symlink or file decides where.

Every state file (the auto host list, ``daemon.json``, the stats JSON files)
goes through :func:`write_atomic`: a new file with an unpredictable name is
created in the target's directory (``mkstemp``: ``O_CREAT|O_EXCL|O_NOFOLLOW``,
so a file or symlink planted at a guessed name is never opened), given its
mode with ``fchmod``, written, synced, then renamed over the target. A rename
replaces a symlink at the target itself, never the file it points to.

:func:`check_directory` refuses a directory another user could change under
the daemon (not owned by it or by root, or writable by its group or by all):
there, a file could be swapped between two system calls whatever care the
writer takes.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from contextlib import suppress
from pathlib import Path

from govpass.errors import GovpassError

STATE_MODE = 0o640  # owner writes, the daemon's group reads (`govpass stats`), others nothing
DIR_MODE = 0o750


class UnsafePathError(GovpassError):
    """A directory or file govpass will not use; the message names it."""


def check_directory(path: Path, what: str) -> None:
    """Raises UnsafePathError (one line naming `path`) unless it is a directory
    owned by this process's user or root and not writable by group or others."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise UnsafePathError(f"{what} {path}: cannot use it: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{what} {path}: not a directory")
    if st.st_uid not in (os.geteuid(), 0):
        raise UnsafePathError(
            f"{what} {path}: owned by uid {st.st_uid}, not by this user (uid {os.geteuid()}) "
            "or root; use a directory only they can change"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePathError(
            f"{what} {path}: writable by {'others' if st.st_mode & stat.S_IWOTH else 'its group'} "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); make it writable by its owner only"
        )


def make_directory(path: Path, what: str, mode: int = DIR_MODE) -> None:
    """Creates `path` with `mode` when missing (parents as usual), then checks it."""
    try:
        path.mkdir(mode=mode, parents=True)
    except FileExistsError:
        pass
    except OSError as e:
        raise UnsafePathError(f"{what} {path}: cannot create it: {e.strerror}") from None
    else:
        os.chmod(path, mode)  # mkdir's mode went through the umask
    check_directory(path, what)


def write_atomic(
    path: Path,
    data: bytes | str,
    mode: int = STATE_MODE,
    sync: bool = True,
    owner: tuple[int, int] | None = None,
) -> None:
    """Replaces `path` with `data` in one step (readers see the old or the new
    file, never part of one). `sync=False` skips the fsync, for files that are
    rewritten every second and worthless after a crash (counters); `owner`:
    (uid, gid) the new file gets, when this process may give it."""
    body = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        if owner is not None and owner != (os.geteuid(), os.getegid()):
            with suppress(PermissionError):  # not root: the file stays ours, with `mode`
                os.fchown(fd, *owner)
        view = memoryview(body)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        # Also reached when an exception (a signal's) arrives just after the rename:
        # the temporary name is gone then, and the original exception must go on.
        with suppress(OSError):
            os.unlink(tmp)
        raise


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of `path`, which must be a regular file (not a symlink, FIFO or
    device) of at most `limit` bytes; OSError otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
        chunks = []
        size = 0
        while chunk := os.read(fd, 65536):
            size += len(chunk)
            if size > limit:
                raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
