"""The kernel pre-filter as an eBPF program for iptables' ``bpf`` match (xt_bpf).

The program is C (``rust/govpass-ebpf/bpf/prefilter.bpf.c``), built by clang
into an object the Rust extension embeds and loads
(:func:`govpass._core.prefilter_load`); this module decides where it is
pinned and for how long.

It decides, per outbound TCP packet that reaches it, whether govpass must see
the packet, without connection tracking:

* a packet whose payload starts like a ClientHello record
  (``16 03 .. .. .. 01``) matches, and its flow is remembered in an LRU hash
  map (key: addresses and ports) with the sequence number where the record ends;
* any other packet with payload matches while its flow is in the map and it
  starts inside the record (the record's later segments, and any part the
  kernel sends again while govpass holds the original), for at most
  ``max_age`` after the record's first packet. The first packet that starts at
  or after the record's end, or comes later than that, drops the entry;
* everything else, pure ACKs and bulk data included, does not match.

With a kernel split gate (:class:`~govpass.rules.spec.KernelSplitGate`), a
ClientHello record that is whole in one packet (not GSO, its size within the
gate's bounds for the packet's headers) does not match either while the gate's map says "on": the
kernel split program (:mod:`govpass.bpf.ksplit`, C) on the egress interface cuts
it instead. The gate is "on" only while that program is attached to every
interface the rules cover.

The iptables rules around it (see :mod:`govpass.rules.iptables`) skip packets
carrying govpass's mark, SYNs and excluded interfaces before the program runs.

Compared with the conntrack pre-filter (connbytes + a connmark bit), no packet
of the namespace pays for connection tracking, which bulk transfers notice.

iptables opens the program by path (``-m bpf --object-pinned``): :func:`pinned`
pins it on a private bpf file system for as long as the rules are being
installed. Only the nf_tables flavour of iptables may carry it: legacy iptables
re-checks every rule of the table, by path, whenever anyone changes the table.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Literal

from govpass import _core
from govpass.bpf import syscall as sc
from govpass.rules.spec import KernelSplitGate

Family = Literal["ipv4", "ipv6"]
PIN_PREFIX = "prefilter-"
VALUE_SIZE = 16  # struct flow in prefilter.bpf.c: u32 end, u32 start, u64 first packet time (ns)


class Loaded:
    """One family's program and map, as open file descriptors (tests and install).

    ``pin_dir`` is a directory on a bpf file system the loader may use while
    loading (it hands the gate map over there); without one, a private one is
    mounted for the load."""

    def __init__(
        self,
        family: str,
        max_age_ns: int,
        gate: KernelSplitGate | None = None,
        pin_dir: str | None = None,
    ) -> None:
        self.family = _family(family)
        if pin_dir is None:
            with _pin_dir(f"load-{os.getpid()}") as directory:
                self.prog_fd, self.map_fd = _load(self.family, max_age_ns, gate, directory)
        else:
            self.prog_fd, self.map_fd = _load(self.family, max_age_ns, gate, pin_dir)

    def close(self) -> None:
        for fd in (self.prog_fd, self.map_fd):
            os.close(fd)

    def __enter__(self) -> Loaded:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def entry(self, key: bytes) -> tuple[int, int] | None:
        """(end sequence, first packet time in ns) stored for ``key``, or None."""
        raw = sc.map_lookup(self.map_fd, key, VALUE_SIZE)
        if raw is None:
            return None
        end, _start, when = struct.unpack("=IIQ", raw)
        return end, when


def _family(family: str) -> Family:
    if family == "ipv4":
        return "ipv4"
    if family == "ipv6":
        return "ipv6"
    raise ValueError(f"family must be ipv4 or ipv6, got {family!r}")


def _load(
    family: Family, max_age_ns: int, gate: KernelSplitGate | None, pin_dir: str
) -> tuple[int, int]:
    spec = None
    if gate is not None:
        spec = (gate.map_fd, gate.min_payload, gate.max_payload, gate.chunk, gate.max_seg_payload)
    return _core.prefilter_load(family, max_age_ns, pin_dir, spec)


# ---------------------------------------------------------------- pinning

# iptables opens the program by path, so it must be pinned while the rules are
# installed; the rule keeps its own reference, so the pin goes right after.
# A private bpf file system per install, under /run, is visible to every command
# started from here (also through `ip netns exec`, which remounts /sys), and
# unmounting it leaves nothing behind.
PIN_ROOT = "/run/govpass"
SYS_BPF = "/sys/fs/bpf"


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _is_bpffs(directory: str) -> bool:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                if fields[4] == directory and fields[sep + 1] == "bpf":
                    return True
    except (OSError, ValueError, IndexError):
        return False
    return False


def _mount_private(directory: str) -> None:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if _libc().mount(b"bpf", os.fsencode(directory), b"bpf", 0, b"mode=0700") != 0:
        err = ctypes.get_errno()
        os.rmdir(directory)
        raise OSError(err, f"cannot mount a bpf file system at {directory}: {os.strerror(err)}")


def _unmount(directory: str) -> None:
    _libc().umount2(os.fsencode(directory), 2)  # MNT_DETACH
    with suppress(OSError):
        os.rmdir(directory)


def _netns_id() -> int:
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return 0


@contextmanager
def _pin_dir(name: str = "") -> Iterator[str]:
    """A directory on a bpf file system for this install's pins (or, with
    ``name``, for another use of this process).

    The install's name depends only on the network namespace, so the rules that
    name a pinned program read the same after every install (idempotent installs)."""
    tag = f"{name}-" if name else ""
    private = f"{PIN_ROOT}/bpf-{tag}{_netns_id()}"
    if _is_bpffs(private):
        _unmount(private)  # left by an install that died half-way
    try:
        _mount_private(private)
    except OSError as mount_error:
        # No CAP_SYS_ADMIN: fall back to the system's bpf fs, when there is one.
        if not _is_bpffs(SYS_BPF):
            raise mount_error from None
        shared = f"{SYS_BPF}/govpass-{tag}{_netns_id()}"
        shutil.rmtree(shared, ignore_errors=True)
        os.mkdir(shared, 0o700)
        try:
            yield shared
        finally:
            shutil.rmtree(shared, ignore_errors=True)
        return
    try:
        yield private
    finally:
        _unmount(private)


@contextmanager
def pinned(
    families: Iterable[str], max_age_ns: int, gate: KernelSplitGate | None = None
) -> Iterator[str]:
    """Load the program for each family and pin it while the block runs.

    Yields a prefix: the program for a family is at ``<prefix>-<family>``.
    Raises :class:`~govpass.bpf.syscall.BpfError` or OSError when this process
    cannot load or pin programs. Nothing stays pinned or mounted afterwards;
    programs that rules reference live on until the rules are deleted."""
    with _pin_dir() as directory:
        prefix = f"{directory}/{PIN_PREFIX[:-1]}"
        for family in families:
            with Loaded(family, max_age_ns, gate, directory) as loaded:
                sc.obj_pin(loaded.prog_fd, f"{prefix}-{family}")
        yield prefix


def unavailable_reason() -> str | None:
    """None when this process can load and pin the pre-filter, else why not (one line)."""
    try:
        with pinned(("ipv4",), 1):
            pass
    except sc.BpfError as e:
        return str(e)
    except OSError as e:
        return e.strerror or str(e)
    return None
