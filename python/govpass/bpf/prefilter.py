"""The kernel pre-filter as an eBPF program for iptables' ``bpf`` match (xt_bpf).

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
gate's bounds) does not match either while the gate's map says "on": the
kernel split program (:mod:`govpass.bpf.ksplit`) on the egress interface cuts
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

from govpass.bpf import asm
from govpass.bpf import syscall as sc
from govpass.bpf.asm import FP, R0, R1, R2, R3, R4, R6, R7, R8, R9
from govpass.rules.spec import KernelSplitGate

PIN_PREFIX = "prefilter-"
MAP_ENTRIES = 8192  # flows with a ClientHello record still in flight, per family
VALUE_SIZE = 16  # u32 end and u32 start sequence, u64 time of the record's first packet (ns)
KEY_SIZE = {"ipv4": 12, "ipv6": 36}  # source and destination address, both ports

# Stack layout of the program (offsets from the frame pointer, all naturally aligned).
_IP = -128  # up to 40 bytes: the IP header
_TCP = -88  # 20 bytes: the TCP header without options
_HEAD = -64  # 6 bytes: the first payload bytes
_VAL = -56  # 16 bytes: the map value
_KEY = -40  # up to 36 bytes: the map key


_SKB_GSO_SEGS = 164  # offset in struct __sk_buff


def build(family: str, map_fd: int, max_age_ns: int, gate: KernelSplitGate | None = None) -> bytes:
    """The program for ``family`` ("ipv4" or "ipv6") using the map ``map_fd``;
    with ``gate``, whole one-packet records are left to the kernel split."""
    if family not in KEY_SIZE:
        raise ValueError(f"family must be ipv4 or ipv6, got {family!r}")
    p = asm.Program()
    p.movr(R6, R1)  # R6 = the skb, kept across calls

    def load_bytes(offset_reg: int | None, offset: int, stack: int, size: int, fail: str) -> None:
        p.movr(R1, R6)
        if offset_reg is None:
            p.mov(R2, offset)
        else:
            p.movr(R2, offset_reg)
        p.movr(R3, FP)
        p.alu(R3, "+", stack)
        p.mov(R4, size)
        p.call(asm.SKB_LOAD_BYTES)
        p.jif(R0, "!=", 0, fail)

    # -- IP header: R7 = TCP header offset, R8 = IP packet length --------------
    if family == "ipv4":
        load_bytes(None, 0, _IP, 20, "no")
        p.ldx(1, R7, FP, _IP)
        p.alu(R7, "&", 0x0F)
        p.alu(R7, "<<", 2)
        p.jif(R7, "<", 20, "no")
        p.ldx(2, R1, FP, _IP + 6)  # flags and fragment offset
        p.be(R1, 16)
        p.alu(R1, "&", 0x3FFF)  # MF or an offset: a fragment
        p.jif(R1, "!=", 0, "no")
        p.ldx(1, R1, FP, _IP + 9)
        p.jif(R1, "!=", 6, "no")  # not TCP
        p.ldx(2, R8, FP, _IP + 2)
        p.be(R8, 16)
    else:
        load_bytes(None, 0, _IP, 40, "no")
        p.ldx(1, R1, FP, _IP + 6)
        p.jif(R1, "!=", 6, "no")  # next header not TCP (extension headers are not followed)
        p.mov(R7, 40)
        p.ldx(2, R8, FP, _IP + 4)
        p.be(R8, 16)
        p.alu(R8, "+", 40)

    # -- TCP header: R7 = payload offset, R8 = payload length, R9 = sequence ----
    load_bytes(R7, 0, _TCP, 20, "no")
    p.ldx(1, R1, FP, _TCP + 12)
    p.alu(R1, ">>", 4)
    p.alu(R1, "<<", 2)
    p.jif(R1, "<", 20, "no")
    p.alu(R7, "+", R1, reg=True)
    p.alu(R8, "-", R7, reg=True)
    p.jif(R8, "s<=", 0, "no")  # no payload (pure ACK) or a bogus length
    p.ldx(4, R9, FP, _TCP + 4)
    p.be(R9, 32)

    # -- the key: addresses, then both ports as on the wire -----------------------
    if family == "ipv4":
        for i in range(2):
            p.ldx(4, R1, FP, _IP + 12 + 4 * i)
            p.stx(4, FP, _KEY + 4 * i, R1)
        p.ldx(4, R1, FP, _TCP)
        p.stx(4, FP, _KEY + 8, R1)
    else:
        for i in range(4):
            p.ldx(8, R1, FP, _IP + 8 + 8 * i)
            p.stx(8, FP, _KEY + 8 * i, R1)
        p.ldx(4, R1, FP, _TCP)
        p.stx(4, FP, _KEY + 32, R1)

    # -- a ClientHello record's first packet? -------------------------------------
    p.jif(R8, "<", 6, "follow")
    load_bytes(R7, 0, _HEAD, 6, "no")
    for index, byte in ((0, 0x16), (1, 0x03), (5, 0x01)):
        p.ldx(1, R1, FP, _HEAD + index)
        p.jif(R1, "!=", byte, "follow")
    if gate is not None:
        _leave_whole_records(p, gate)
    p.label("remember")
    p.ldx(1, R1, FP, _HEAD + 3)
    p.alu(R1, "<<", 8)
    p.ldx(1, R2, FP, _HEAD + 4)
    p.alu(R1, "|", R2, reg=True)
    p.alu(R1, "+", 5)  # R1 = the record's size
    # Remembered even when the whole record is in this packet: the kernel may send
    # part of it again (a tail loss probe) while govpass still holds the original.
    p.movr(R7, R9, bits=32)
    p.alu(R7, "+", R1, reg=True, bits=32)  # R7 = where the record ends (mod 2^32)
    p.stx(4, FP, _VAL, R7)
    p.stx(4, FP, _VAL + 4, R9)  # where it starts
    p.call(asm.KTIME_GET_NS)
    p.stx(8, FP, _VAL + 8, R0)
    p.ld_map_fd(R1, map_fd)
    p.movr(R2, FP)
    p.alu(R2, "+", _KEY)
    p.movr(R3, FP)
    p.alu(R3, "+", _VAL)
    p.mov(R4, 0)  # BPF_ANY
    p.call(asm.MAP_UPDATE_ELEM)
    p.jmp("yes")

    # -- a later packet of a flow whose record is still in flight? -----------------
    p.label("follow")
    p.ld_map_fd(R1, map_fd)
    p.movr(R2, FP)
    p.alu(R2, "+", _KEY)
    p.call(asm.MAP_LOOKUP_ELEM)
    p.jif(R0, "==", 0, "no")
    p.ldx(4, R7, R0, 0)  # end sequence
    p.ldx(4, R8, R0, 4)  # start sequence (R8, the payload length, is not needed any more)
    p.ldx(8, R1, R0, 8)  # first packet's time
    p.stx(8, FP, _VAL + 8, R1)
    p.call(asm.KTIME_GET_NS)
    p.ldx(8, R1, FP, _VAL + 8)
    p.alu(R0, "-", R1, reg=True)
    p.ld_imm64(R1, max_age_ns)
    p.jif(R0, ">", R1, "forget_no", reg=True)  # collecting has ended long ago
    # Inside the record when (seq - start) < (end - start), both mod 2^32.
    p.alu(R7, "-", R8, reg=True, bits=32)  # R7 = the record's size
    p.alu(R9, "-", R8, reg=True, bits=32)  # R9 = this packet's offset in the record
    p.jif(R9, ">=", R7, "forget_no", reg=True)  # before the record or at/after its end
    p.label("yes")
    p.ret(1)
    p.label("forget_no")
    _delete(p, map_fd)
    p.label("no")
    p.ret(0)
    return p.assemble()


def _leave_whole_records(p: asm.Program, gate: KernelSplitGate) -> None:
    """No match (the kernel split takes it) for a record whole in this packet,
    within the gate's sizes, not GSO, while the gate is on; else on to "remember".
    The same tests as the kernel split program's, which must take every packet
    left here."""
    p.ldx(1, R1, FP, _HEAD + 3)
    p.alu(R1, "<<", 8)
    p.ldx(1, R2, FP, _HEAD + 4)
    p.alu(R1, "|", R2, reg=True)
    p.alu(R1, "+", 5)
    p.jif(R1, "!=", R8, "remember", reg=True)
    p.jif(R8, "<", gate.min_payload, "remember")
    p.jif(R8, ">", gate.max_payload, "remember")
    p.ldx(4, R1, R6, _SKB_GSO_SEGS)
    p.jif(R1, ">", 1, "remember")
    p.st(4, FP, _VAL, 0)
    p.ld_map_fd(R1, gate.map_fd)
    p.movr(R2, FP)
    p.alu(R2, "+", _VAL)
    p.call(asm.MAP_LOOKUP_ELEM)
    p.jif(R0, "==", 0, "remember")
    p.ldx(4, R1, R0, 0)
    p.jif(R1, "==", 0, "remember")
    p.ret(0)


def _delete(p: asm.Program, map_fd: int) -> None:
    p.ld_map_fd(R1, map_fd)
    p.movr(R2, FP)
    p.alu(R2, "+", _KEY)
    p.call(asm.MAP_DELETE_ELEM)


class Loaded:
    """One family's program and map, as open file descriptors (tests and install)."""

    def __init__(self, family: str, max_age_ns: int, gate: KernelSplitGate | None = None) -> None:
        self.family = family
        self.map_fd = sc.map_create(sc.MAP_TYPE_LRU_HASH, KEY_SIZE[family], VALUE_SIZE, MAP_ENTRIES)
        try:
            code = build(family, self.map_fd, max_age_ns, gate)
            self.prog_fd = sc.prog_load(
                sc.PROG_TYPE_SOCKET_FILTER, code, license="GPL", name=f"govpass_{family[-2:]}"
            )
        except BaseException:
            os.close(self.map_fd)
            raise

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
def _pin_dir() -> Iterator[str]:
    """A directory on a bpf file system for this install's pins.

    Its name depends only on the network namespace, so the rules that name a
    pinned program read the same after every install (idempotent installs)."""
    private = f"{PIN_ROOT}/bpf-{_netns_id()}"
    if _is_bpffs(private):
        _unmount(private)  # left by an install that died half-way
    try:
        _mount_private(private)
    except OSError as mount_error:
        # No CAP_SYS_ADMIN: fall back to the system's bpf fs, when there is one.
        if not _is_bpffs(SYS_BPF):
            raise mount_error from None
        shared = f"{SYS_BPF}/govpass-{_netns_id()}"
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
            with Loaded(family, max_age_ns, gate) as loaded:
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
