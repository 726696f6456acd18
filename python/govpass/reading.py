"""Reading files a user names (config, host lists, IP sets): regular files only,
size bounded, gzip output bounded by the same limit.

A FIFO, a device or a directory in place of a list would block the reader or
make no sense, so the file is opened with O_NONBLOCK (opening a FIFO then does
not wait for a writer) and refused unless fstat says it is a regular file. The
size is checked on the open descriptor, and reading stops one byte past the
limit, so a file growing meanwhile is caught too.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import zlib
from pathlib import Path

from govpass.errors import ConfigError
from govpass.quoting import escape_text, quote

GZIP_MAGIC = b"\x1f\x8b"
_ACCEPTED = " (accepted: a readable regular file)"
MIB = 1024 * 1024


def _what(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def shown(path: Path | str) -> str:
    """A path for a message: quoted only when it holds something odd."""
    text = os.fspath(path)
    plain = text.isprintable() and len(text) <= 200 and " " not in text
    return text if plain else quote(text, 200)


def check_path(path: Path | str, what: str, field: str) -> None:
    """Refuses a path no system call takes (a NUL byte)."""
    if "\0" in os.fspath(path):
        raise ConfigError(
            f"{what} {shown(path)}: a path cannot hold a NUL byte (accepted: a file path)",
            field=field,
        )


# A FIFO or a terminal must not block or become the controlling one: O_NONBLOCK for
# the open, cleared once fstat said "regular file". Windows has none of these flags
# (and no FIFOs); there the file is opened in binary mode, never text mode.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_OPEN_FLAGS = (
    os.O_RDONLY
    | _NONBLOCK
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_BINARY", 0)
)


def read_bounded(
    path: Path,
    what: str,
    field: str,
    limit: int,
    limit_name: str | None = None,
    missing_ok: bool = False,
    gunzip: bool = False,
) -> bytes:
    """The bytes of regular file `path`, at most `limit` of them (after gzip
    decompression too when `gunzip` and the data starts with gzip's magic).

    Every failure is one ConfigError naming `what` and `path`; `limit_name` is
    the setting that raises the limit (None: a fixed limit). A missing file is
    b"" when `missing_ok`."""
    check_path(path, what, field)
    where = f"{what} {shown(path)}"
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        if missing_ok:
            return b""
        raise ConfigError(f"{where}: cannot read: no such file{_ACCEPTED}", field=field) from None
    except OSError as e:
        raise ConfigError(f"{where}: cannot read: {e.strerror}{_ACCEPTED}", field=field) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(
                f"{where}: {_what(st.st_mode)} (accepted: a regular file)", field=field
            )
        more = f"; raise {limit_name} to read more" if limit_name else ""
        over = ConfigError(
            f"{where}: larger than {_size(limit)} (accepted: at most {_size(limit)}{more})",
            field=field,
        )
        if st.st_size > limit:
            raise over
        if _NONBLOCK:
            os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise ConfigError(f"{where}: cannot read: {e.strerror}{_ACCEPTED}", field=field) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise over
    if gunzip and data[:2] == GZIP_MAGIC:
        data = _gunzip(data, where, field, limit, over)
    return data


def _gunzip(data: bytes, where: str, field: str, limit: int, over: ConfigError) -> bytes:
    """Decompresses at most `limit` bytes (a gzip bomb stops at the limit)."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            out = f.read(limit + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise ConfigError(
            f"{where}: broken gzip data ({escape_text(str(e), 100)}; accepted: plain text "
            "or whole gzip data)",
            field=field,
        ) from None
    if len(out) > limit:
        raise ConfigError(f"{over} (after gzip decompression)", field=field)
    return out


def _size(n: int) -> str:
    return f"{n / MIB:g} MiB" if n >= MIB and n % (MIB // 16) == 0 else f"{n} bytes"
