"""The few bpf(2) commands govpass uses, through ctypes (Linux only).

Each function packs ``union bpf_attr`` for one command, calls the syscall and
raises :class:`BpfError` (with the errno name) on failure. File descriptors
returned are owned by the caller: close them with :func:`os.close`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from dataclasses import dataclass

from govpass.errors import GovpassError

# syscall numbers of bpf(2) per machine (asm/unistd.h)
_SYSCALL_NR = {"x86_64": 321, "amd64": 321, "aarch64": 280, "arm64": 280, "riscv64": 280}

# commands
_MAP_CREATE, _MAP_LOOKUP_ELEM, _MAP_UPDATE_ELEM = 0, 1, 2
_OBJ_PIN, _OBJ_GET, _PROG_TEST_RUN = 6, 7, 10

# types
MAP_TYPE_ARRAY = 2

_ATTR_SIZE = 160  # larger than every layout below; the tail stays zero


class BpfError(GovpassError, OSError):
    """A bpf(2) command failed; ``errno`` is set, ``log`` holds the verifier's words."""

    def __init__(self, what: str, err: int, log: str = "") -> None:
        name = errno.errorcode.get(err, str(err))
        super().__init__(err, f"bpf {what}: {os.strerror(err)} ({name})")
        self.log = log


_libc: ctypes.CDLL | None = None


def _call(cmd: int, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
    global _libc
    nr = _SYSCALL_NR.get(platform.machine().lower())
    if nr is None:
        raise BpfError(what, errno.ENOSYS)
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    ret = int(_libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr))))
    if ret < 0:
        raise BpfError(what, ctypes.get_errno())
    return ret


def _attr(fmt: str, *values: object) -> ctypes.Array[ctypes.c_char]:
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into(fmt, buf, 0, *values)
    return buf


def _addr(obj: ctypes.Array[ctypes.c_char] | None) -> int:
    return 0 if obj is None else ctypes.addressof(obj)


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int) -> int:
    """A new map; returns its file descriptor."""
    attr = _attr("=IIIII", map_type, key_size, value_size, max_entries, 0)
    return _call(_MAP_CREATE, attr, "map create")


def obj_pin(fd: int, path: str) -> None:
    """Pin the object behind ``fd`` at ``path`` (on a mounted bpf file system)."""
    name = ctypes.create_string_buffer(os.fsencode(path) + b"\0")
    _call(_OBJ_PIN, _attr("=QII", _addr(name), fd, 0), f"pin {path}")


def obj_get(path: str) -> int:
    """Open a pinned object; returns a new file descriptor."""
    name = ctypes.create_string_buffer(os.fsencode(path) + b"\0")
    return _call(_OBJ_GET, _attr("=QII", _addr(name), 0, 0), f"open {path}")


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value stored under ``key``, or None."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    try:
        _call(_MAP_LOOKUP_ELEM, _attr("=IIQQQ", map_fd, 0, _addr(k), _addr(v), 0), "map lookup")
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return v.raw


def map_update(map_fd: int, key: bytes, value: bytes) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    _call(_MAP_UPDATE_ELEM, _attr("=IIQQQ", map_fd, 0, _addr(k), _addr(v), 0), "map update")


@dataclass(frozen=True)
class TestRun:
    retval: int  # as the kernel stores it: unsigned (a tcx program's -1 reads 0xFFFFFFFF)
    duration_ns: int
    data: bytes = b""  # the packet after the program, when asked for with ``out_size``


def prog_test_run(
    prog_fd: int, data: bytes, repeat: int = 1, *, out_size: int = 0, ctx: bytes = b""
) -> TestRun:
    """Run a program on ``data`` in the kernel (BPF_PROG_TEST_RUN).

    For socket filters ``data`` is an Ethernet frame; the program sees the
    packet from its network header on, as in an xt_bpf match. For tc programs
    the program sees the whole frame.

    With ``out_size``, the packet as the program left it is returned in
    :attr:`TestRun.data` (for tc programs, from the Ethernet header on); a
    packet larger than ``out_size`` raises BpfError with ENOSPC. ``ctx`` is the
    context given to the program (for skb programs a ``struct __sk_buff``, of
    which the kernel takes a few fields such as ``mark``), none when empty."""
    buf = ctypes.create_string_buffer(data, len(data))
    out = ctypes.create_string_buffer(out_size) if out_size > 0 else None
    ctx_buf = ctypes.create_string_buffer(ctx, len(ctx)) if ctx else None
    # union bpf_attr, test: prog_fd, retval, data_size_in, data_size_out, data_in,
    # data_out, repeat, duration, ctx_size_in, ctx_size_out, ctx_in, ctx_out, ...
    attr = _attr(
        "=IIIIQQIIIIQQ",
        prog_fd,
        0,
        len(data),
        out_size if out is not None else 0,
        _addr(buf),
        _addr(out),
        repeat,
        0,
        len(ctx),
        0,
        _addr(ctx_buf),
        0,
    )
    _call(_PROG_TEST_RUN, attr, "test run")
    retval, _size_in, size_out = struct.unpack_from("=III", attr, 4)
    duration = struct.unpack_from("=I", attr, 36)[0]
    output = out.raw[: min(size_out, out_size)] if out is not None else b""
    return TestRun(retval, duration, output)
