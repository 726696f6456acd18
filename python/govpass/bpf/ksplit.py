"""The kernel split: a tc egress (tcx) eBPF program that makes govpass's default
split of a ClientHello that leaves whole in one packet, without the packet
going to user space.

The engine cuts a ClientHello record into a first segment of ``split-chunk``
bytes and the rest. For the common case, a record that fits one packet, this
program makes the same two segments on the interface's egress path, so the
connection never waits for a worker to wake up. Everything else (records over
several packets, host lists, split positions, auto-learning) stays with the
NFQUEUE workers: the rules' pre-filter (:mod:`govpass.bpf.prefilter`) leaves
exactly the packets this program takes out of the queue, and only while the
daemon has the program attached to every interface the rules cover.

A packet is split when all of these hold (anything else goes on untouched):

* it does not carry govpass's mark (the workers' own packets);
* it is not a GSO packet (one packet on the wire);
* it has a socket (host mode: this machine's traffic) or none (router mode:
  forwarded traffic), as the rules' hook (OUTPUT or FORWARD) would see it;
* IPv4 without fragmentation, or IPv6 whose next header is TCP;
* TCP to one of the ports, no SYN, FIN, RST or URG flag (the engine leaves those
  whole too);
* the payload is exactly one ClientHello record (``16 03 .. LL LL 01``,
  record length + 5 = payload length), longer than ``chunk`` and at most
  ``max_payload`` bytes.

How: the bytes after the first ``chunk`` are copied to a per-CPU scratch map,
the packet is cut to the first ``chunk`` bytes and a copy of it leaves
(``bpf_clone_redirect`` to the same interface; that copy meets this program
again and goes on, being no whole record any more); then the packet itself
grows back, takes the rest of the payload, and its sequence number moves on by
``chunk``. IP lengths, the IPv4 header checksum and the TCP checksum are
updated in place.

Checksums: the TCP checksum field of a packet the kernel will finish
(CHECKSUM_PARTIAL, this host's own TCP) holds only the pseudo-header sum; of a
forwarded packet it holds the full sum. The length changes go through
``bpf_l4_csum_replace`` with the pseudo-header flag, which is right in both
cases; the payload and sequence changes go in as differences without that
flag, which the kernel applies only to full sums. The payload differences are
one's complement sums (``bpf_csum_diff``) of the two parts of the record. A
forwarded packet that arrived as CHECKSUM_COMPLETE keeps its receive-side
``skb->csum``, stale after the cut; on egress nothing reads it (a NIC sends the
checksum field as it is), so it is left alone.

If a step fails before the packet is cut, it goes on whole ("unsplit"); if the
copy cannot be sent, the first segment goes on alone ("first_only": TCP sends
the rest again); if a cut packet cannot be made right (the rest cannot grow
back, a header cannot be updated), it is dropped ("dropped": TCP sends it
again). Counters count each case.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from govpass.bpf import asm
from govpass.bpf import syscall as sc
from govpass.bpf.asm import FP, R0, R1, R2, R3, R4, R5, R6, R7, R8, R9

CHUNK_MAX = 64  # the first segment is summed from the stack
PAYLOAD_MAX = 1500  # the largest whole record split here (one Ethernet MTU)
_STEP = 512  # bpf_csum_diff sums at most 512 bytes per call
SCRATCH = 3 * _STEP + 8  # the rest of a record, padded to 4 bytes, summed in 3 steps
assert SCRATCH >= PAYLOAD_MAX + 4

# Counters (a per-CPU array of u64): what happened to the records taken.
COUNTERS = ("split", "unsplit", "first_only", "dropped")
SPLIT, UNSPLIT, FIRST_ONLY, DROPPED = range(len(COUNTERS))

TCX_NEXT = -1  # go on: the next program on the interface, then the qdisc
TCX_DROP = 2
_FIN, _SYN, _RST, _PSH, _URG = 0x01, 0x02, 0x04, 0x08, 0x20  # TCP flags
F_PSEUDO_HDR = 0x10  # bpf_l4_csum_replace: the field is part of the pseudo-header

# struct __sk_buff
_SKB_MARK, _SKB_PROTOCOL, _SKB_IFINDEX, _SKB_DATA, _SKB_DATA_END = 8, 16, 40, 76, 80
_SKB_GSO_SEGS, _SKB_SK = 164, 168
ETH_P_IP_BE, ETH_P_IPV6_BE = 0x0008, 0xDD86  # as read from __sk_buff.protocol

# Stack slots (offsets from the frame pointer).
_IP = -256  # 40 bytes: the IP header
_TCP = -208  # 20 bytes: the TCP header without options
_HEAD = -176  # 6 bytes: the record's header and handshake type
_A = -160  # 72 bytes: the first segment's payload, zero padded
_KEY = -80  # 4 bytes: a map key
_TMP = -72  # 8 bytes: values on their way to a helper
_L4 = -64  # where the TCP header starts
_D1 = -56  # payload difference of the first segment against the record
_D2 = -48  # payload difference of the rest against the first segment
_SEQ = -40  # 4 bytes: the rest's sequence number, network order
_PAD = -32  # the rest's length rounded up to 4 bytes; then the running sum


@dataclass(frozen=True)
class Params:
    """What the program is built for (constants in its code)."""

    chunk: int  # first segment's size
    max_payload: int  # largest record split (≤ PAYLOAD_MAX)
    ports: tuple[int, ...]  # destination ports
    mark: int  # govpass's mark: packets carrying any of its bits are left alone
    local: bool  # host mode (packets with a socket) or router mode (without)
    l2: int = 14  # link header bytes before the IP header (14 Ethernet, 0 raw IP)

    def __post_init__(self) -> None:
        if not 1 <= self.chunk <= CHUNK_MAX:
            raise ValueError(f"chunk must be in 1..{CHUNK_MAX}, got {self.chunk}")
        if not self.min_payload <= self.max_payload <= PAYLOAD_MAX:
            raise ValueError(f"max_payload must be in {self.min_payload}..{PAYLOAD_MAX}")
        if not self.ports or any(not 1 <= p <= 0xFFFF for p in self.ports):
            raise ValueError(f"ports must be 1..65535, got {self.ports}")
        if not 0 < self.mark <= 0xFFFFFFFF:
            raise ValueError(f"mark must be a non-zero 32-bit value, got {self.mark:#x}")
        if self.l2 not in (0, 14):
            raise ValueError(f"l2 must be 0 or 14, got {self.l2}")

    @property
    def min_payload(self) -> int:
        """The smallest payload split: a record header and type, more than ``chunk``."""
        return max(6, self.chunk + 1)


def _s32(value: int) -> int:
    return value - 2**32 if value >= 2**31 else value


def build(params: Params, scratch_fd: int, counters_fd: int) -> bytes:
    """The program's code; registers kept across calls: R6 the skb, R7 the
    payload's offset, R8 the payload's length, R9 the scratch buffer."""
    p = asm.Program()
    n, l2 = params.chunk, params.l2
    p.movr(R6, R1)

    def call(helper: int, *args: tuple[str, int]) -> None:
        """R1 = skb, then R2.. from ("imm", n) / ("reg", r) / ("fp", off) / ("slot", off)."""
        p.movr(R1, R6)
        for reg, (kind, value) in zip((R2, R3, R4, R5), args, strict=False):
            if kind == "imm":
                p.mov(reg, value)
            elif kind == "reg":
                p.movr(reg, value)
            elif kind == "slot":
                p.ldx(8, reg, FP, value)
            else:
                p.movr(reg, FP)
                p.alu(reg, "+", value)
        p.call(helper)

    def load(where: tuple[str, int], slot: int, size: int) -> None:
        call(asm.SKB_LOAD_BYTES, where, ("fp", slot), ("imm", size))
        p.jif(R0, "!=", 0, "next")

    def bump(index: int) -> None:
        p.st(4, FP, _KEY, index)
        p.ld_map_fd(R1, counters_fd)
        p.movr(R2, FP)
        p.alu(R2, "+", _KEY)
        p.call(asm.MAP_LOOKUP_ELEM)
        skip = f"bump{len(p.insns)}"
        p.jif(R0, "==", 0, skip)
        p.ldx(8, R1, R0, 0)
        p.alu(R1, "+", 1)
        p.stx(8, R0, 0, R1)
        p.label(skip)

    def fold(reg: int) -> None:
        """``reg`` (a 32-bit sum) folded to 16 bits (R1 clobbered)."""
        for _ in range(2):
            p.movr(R1, reg)
            p.alu(R1, ">>", 16)
            p.alu(reg, "&", 0xFFFF)
            p.alu(reg, "+", R1, reg=True)

    def rest_length(reg: int) -> None:
        """``reg`` = payload length - chunk, proven to lie in 1..max_payload-chunk."""
        p.movr(reg, R8)
        p.alu(reg, "-", n)
        p.jif(reg, "<", 1, "next")
        p.jif(reg, ">", params.max_payload - n, "next")

    # -- cheap tests first: every packet leaving the interface meets them --------------
    p.ldx(4, R1, R6, _SKB_MARK)
    p.alu(R1, "&", _s32(params.mark), bits=32)
    p.jif(R1, "!=", 0, "next")
    p.ldx(4, R1, R6, _SKB_GSO_SEGS)
    p.jif(R1, ">", 1, "next")
    p.ldx(8, R1, R6, _SKB_SK)
    p.jif(R1, "==" if params.local else "!=", 0, "next")
    p.ldx(4, R1, R6, _SKB_PROTOCOL)
    p.jif(R1, "==", ETH_P_IP_BE, "screen_ipv4")
    p.jif(R1, "==", ETH_P_IPV6_BE, "screen_ipv6")
    p.jmp("next")
    _screen(p, params)

    for family in ("ipv4", "ipv6"):
        v4 = family == "ipv4"
        f = family + "_"
        p.label(family)
        # -- IP header: _L4 = the TCP header's offset, R8 = the packet's end ------------
        if v4:
            load(("imm", l2), _IP, 20)
            p.ldx(1, R1, FP, _IP)
            p.movr(R2, R1)
            p.alu(R2, ">>", 4)
            p.jif(R2, "!=", 4, "next")
            p.alu(R1, "&", 0x0F)
            p.alu(R1, "<<", 2)
            p.jif(R1, "<", 20, "next")
            p.ldx(2, R2, FP, _IP + 6)
            p.be(R2, 16)
            p.alu(R2, "&", 0x3FFF)  # MF or a fragment offset
            p.jif(R2, "!=", 0, "next")
            p.ldx(1, R2, FP, _IP + 9)
            p.jif(R2, "!=", 6, "next")
            p.alu(R1, "+", l2)
            p.stx(8, FP, _L4, R1)
            p.ldx(2, R8, FP, _IP + 2)
            p.be(R8, 16)
            p.alu(R8, "+", l2)
        else:
            load(("imm", l2), _IP, 40)
            p.ldx(1, R1, FP, _IP)
            p.alu(R1, ">>", 4)
            p.jif(R1, "!=", 6, "next")
            p.ldx(1, R1, FP, _IP + 6)
            p.jif(R1, "!=", 6, "next")  # next header not TCP
            p.mov(R1, l2 + 40)
            p.stx(8, FP, _L4, R1)
            p.ldx(2, R8, FP, _IP + 4)
            p.be(R8, 16)
            p.alu(R8, "+", l2 + 40)

        # -- TCP header: R7 = the payload's offset, R8 = its length ---------------------
        p.ldx(8, R7, FP, _L4)
        load(("reg", R7), _TCP, 20)
        p.ldx(2, R1, FP, _TCP + 2)
        p.be(R1, 16)
        for port in params.ports:
            p.jif(R1, "==", port, f + "port")
        p.jmp("next")
        p.label(f + "port")
        p.ldx(1, R1, FP, _TCP + 13)
        p.alu(R1, "&", _SYN | _FIN | _RST | _URG)  # a TCP Fast Open SYN carries data
        p.jif(R1, "!=", 0, "next")
        p.ldx(1, R1, FP, _TCP + 12)
        p.alu(R1, ">>", 4)
        p.alu(R1, "<<", 2)
        p.jif(R1, "<", 20, "next")
        p.alu(R7, "+", R1, reg=True)
        p.alu(R8, "-", R7, reg=True)
        p.jif(R8, "s<", params.min_payload, "next")
        p.jif(R8, ">", params.max_payload, "next")
        load(("reg", R7), _HEAD, 6)
        for index, byte in ((0, 0x16), (1, 0x03), (5, 0x01)):
            p.ldx(1, R1, FP, _HEAD + index)
            p.jif(R1, "!=", byte, "next")
        p.ldx(1, R1, FP, _HEAD + 3)
        p.alu(R1, "<<", 8)
        p.ldx(1, R2, FP, _HEAD + 4)
        p.alu(R1, "|", R2, reg=True)
        p.alu(R1, "+", 5)
        p.jif(R1, "!=", R8, "next", reg=True)  # not exactly one whole record

        # -- the two parts and their sums ---------------------------------------------------
        p.st(4, FP, _KEY, 0)
        p.ld_map_fd(R1, scratch_fd)
        p.movr(R2, FP)
        p.alu(R2, "+", _KEY)
        p.call(asm.MAP_LOOKUP_ELEM)
        p.jif(R0, "==", 0, "unsplit")
        p.movr(R9, R0)
        rest_length(R4)
        p.movr(R2, R7)
        p.alu(R2, "+", n)
        call(asm.SKB_LOAD_BYTES, ("reg", R2), ("reg", R9), ("reg", R4))
        p.jif(R0, "!=", 0, "unsplit")
        rest_length(R4)
        p.movr(R1, R9)
        p.alu(R1, "+", R4, reg=True)
        p.st(4, R1, 0, 0)  # zero padding up to the next 4 bytes
        p.alu(R4, "+", 3)
        p.alu(R4, "&", -4)
        p.stx(8, FP, _PAD, R4)
        for off in range(0, 72, 8):
            p.st(8, FP, _A + off, 0)
        load(("reg", R7), _A, n)
        # sum(first part)
        p.mov(R1, 0)
        p.mov(R2, 0)
        p.movr(R3, FP)
        p.alu(R3, "+", _A)
        p.mov(R4, (n + 3) & ~3)
        p.mov(R5, 0)
        p.call(asm.CSUM_DIFF)
        p.jif(R0, "s<", 0, "unsplit")
        p.movr(R7, R0)  # R7 is reloaded below
        fold(R7)
        p.stx(8, FP, _D2, R7)
        # sum(rest), in steps of at most 512 bytes
        p.ldx(8, R4, FP, _PAD)
        p.st(8, FP, _PAD, 0)
        p.stx(8, FP, _TMP, R4)
        for step in range(3):
            done, ok = f"{f}summed", f"{f}step{step}"
            p.ldx(8, R4, FP, _TMP)
            p.alu(R4, "-", step * _STEP)
            p.jif(R4, "s<=", 0, done)
            p.jif(R4, "<=", _STEP, ok)
            p.mov(R4, _STEP)
            p.label(ok)
            p.mov(R1, 0)
            p.mov(R2, 0)
            p.movr(R3, R9)
            p.alu(R3, "+", step * _STEP)
            p.ldx(8, R5, FP, _PAD)
            p.call(asm.CSUM_DIFF)
            p.jif(R0, "s<", 0, "unsplit")
            p.stx(8, FP, _PAD, R0)
        p.label(f + "summed")
        p.ldx(8, R7, FP, _PAD)
        fold(R7)  # R7 = sum(rest) as if it began the payload
        # The rest against the first segment: + sum(rest) - sum(first part).
        p.ldx(8, R2, FP, _D2)
        p.mov(R3, 0xFFFF)
        p.alu(R3, "-", R2, reg=True)
        p.alu(R3, "+", R7, reg=True)
        p.stx(8, FP, _D2, R3)
        # The first segment against the record: - sum(rest where it was, at byte n).
        if n % 2:
            p.movr(R2, R7)
            p.alu(R2, "&", 0xFF)
            p.alu(R2, "<<", 8)
            p.alu(R7, ">>", 8)
            p.alu(R7, "|", R2, reg=True)
        p.mov(R3, 0xFFFF)
        p.alu(R3, "-", R7, reg=True)
        p.stx(8, FP, _D1, R3)
        # R7 back to the payload's offset
        p.ldx(1, R7, FP, _TCP + 12)
        p.alu(R7, ">>", 4)
        p.alu(R7, "<<", 2)
        p.ldx(8, R1, FP, _L4)
        p.alu(R7, "+", R1, reg=True)
        p.jif(R7, ">", l2 + 60 + 60, "unsplit")  # bounds for the verifier

        def lengths(
            old_payload: tuple[str, int], new_payload: tuple[str, int], v4: bool = v4
        ) -> None:
            """IP length (and IPv4 header sum) and the TCP pseudo-header sum, for a
            payload length going from ``old_payload`` to ``new_payload`` (("reg", R8)
            or ("imm", n))."""
            for slot, (kind, value) in ((0, old_payload), (4, new_payload)):
                if kind == "reg":
                    p.movr(R2, value)
                else:
                    p.mov(R2, value)
                p.alu(R2, "+", R7, reg=True)  # payload end
                p.movr(R3, R2)
                p.ldx(8, R1, FP, _L4)
                p.alu(R3, "-", R1, reg=True)  # TCP length
                p.alu(R2, "-", l2 if v4 else l2 + 40)  # IPv4 total / IPv6 payload length
                p.be(R2, 16)
                p.be(R3, 16)
                p.stx(2, FP, _TMP + slot, R2)
                p.stx(2, FP, _TMP + slot + 2, R3)
            if v4:
                p.ldx(2, R3, FP, _TMP)
                p.ldx(2, R4, FP, _TMP + 4)
                call(asm.L3_CSUM_REPLACE, ("imm", l2 + 10), ("reg", R3), ("reg", R4), ("imm", 2))
                p.jif(R0, "!=", 0, "dropped")
            where = l2 + 2 if v4 else l2 + 4
            call(asm.SKB_STORE_BYTES, ("imm", where), ("fp", _TMP + 4), ("imm", 2), ("imm", 0))
            p.jif(R0, "!=", 0, "dropped")
            p.ldx(8, R2, FP, _L4)
            p.alu(R2, "+", 16)
            p.ldx(2, R3, FP, _TMP + 2)
            p.ldx(2, R4, FP, _TMP + 6)
            call(asm.L4_CSUM_REPLACE, ("reg", R2), ("reg", R3), ("reg", R4),
                 ("imm", F_PSEUDO_HDR | 2))  # fmt: skip
            p.jif(R0, "!=", 0, "dropped")

        def payload_diff(slot: int) -> None:
            p.ldx(8, R2, FP, _L4)
            p.alu(R2, "+", 16)
            call(asm.L4_CSUM_REPLACE, ("reg", R2), ("imm", 0), ("slot", slot), ("imm", 0))
            p.jif(R0, "!=", 0, "dropped")

        def tcp_flags(was_cleared: int, clear: int, set_: int) -> None:
            """The packet's TCP flags from the original's, less ``was_cleared``, to the
            original's less ``clear`` plus ``set_``; the checksum follows."""
            p.ldx(1, R1, FP, _TCP + 12)  # the data offset: the flags' 16-bit word
            p.stx(1, FP, _TMP, R1)
            p.stx(1, FP, _TMP + 2, R1)
            p.ldx(1, R1, FP, _TCP + 13)
            p.movr(R2, R1)
            p.alu(R1, "&", 0xFF & ~was_cleared)
            p.stx(1, FP, _TMP + 1, R1)
            p.alu(R2, "&", 0xFF & ~clear)
            p.alu(R2, "|", set_)
            p.stx(1, FP, _TMP + 3, R2)
            p.ldx(8, R2, FP, _L4)
            p.alu(R2, "+", 16)
            p.ldx(2, R3, FP, _TMP)
            p.ldx(2, R4, FP, _TMP + 2)
            call(asm.L4_CSUM_REPLACE, ("reg", R2), ("reg", R3), ("reg", R4), ("imm", 2))
            p.jif(R0, "!=", 0, "dropped")
            p.ldx(8, R2, FP, _L4)
            p.alu(R2, "+", 12)
            call(asm.SKB_STORE_BYTES, ("reg", R2), ("fp", _TMP + 2), ("imm", 2), ("imm", 0))
            p.jif(R0, "!=", 0, "dropped")

        # -- the first segment: cut to n bytes, and a copy of it sent ------------------------
        p.movr(R2, R7)
        p.alu(R2, "+", n)
        call(asm.SKB_CHANGE_TAIL, ("reg", R2), ("imm", 0))
        p.jif(R0, "!=", 0, "unsplit")
        lengths(("reg", R8), ("imm", n))
        payload_diff(_D1)
        # As the engine's segments: PSH only on the last one, whatever the original had.
        tcp_flags(0, _PSH, 0)
        p.ldx(4, R2, R6, _SKB_IFINDEX)
        call(asm.CLONE_REDIRECT, ("reg", R2), ("imm", 0))
        p.jif(R0, "!=", 0, "first_only")

        # -- the rest: the packet grown back, refilled, its sequence number moved -------
        rest_length(R2)
        p.alu(R2, "+", R7, reg=True)
        call(asm.SKB_CHANGE_TAIL, ("reg", R2), ("imm", 0))
        p.jif(R0, "!=", 0, "dropped")
        rest_length(R4)
        call(asm.SKB_STORE_BYTES, ("reg", R7), ("reg", R9), ("reg", R4), ("imm", 0))
        p.jif(R0, "!=", 0, "dropped")
        rest_length(R5)
        lengths(("imm", n), ("reg", R5))
        payload_diff(_D2)
        tcp_flags(_PSH, 0, _PSH)
        p.ldx(4, R2, FP, _TCP + 4)
        p.be(R2, 32)
        p.alu(R2, "+", n, bits=32)
        p.be(R2, 32)
        p.stx(4, FP, _SEQ, R2)
        p.ldx(8, R2, FP, _L4)
        p.alu(R2, "+", 16)
        p.ldx(4, R3, FP, _TCP + 4)
        p.ldx(4, R4, FP, _SEQ)
        call(asm.L4_CSUM_REPLACE, ("reg", R2), ("reg", R3), ("reg", R4), ("imm", 4))
        p.jif(R0, "!=", 0, "dropped")
        p.ldx(8, R2, FP, _L4)
        p.alu(R2, "+", 4)
        call(asm.SKB_STORE_BYTES, ("reg", R2), ("fp", _SEQ), ("imm", 4), ("imm", 0))
        p.jif(R0, "!=", 0, "dropped")
        bump(SPLIT)
        p.jmp("next")

    p.label("unsplit")  # nothing changed: the record goes on whole
    bump(UNSPLIT)
    p.jmp("next")
    p.label("first_only")  # the first segment goes on; TCP sends the rest again
    bump(FIRST_ONLY)
    p.jmp("next")
    p.label("dropped")  # cut, but a header could not be made right: TCP sends it again
    bump(DROPPED)
    p.ret(TCX_DROP)
    p.label("next")
    p.ret(TCX_NEXT)
    return p.assemble()


def _screen(p: asm.Program, params: Params) -> None:
    """Sends most packets on at once, reading their headers in place (no helper
    call): not TCP, another port, a SYN, or a payload length no whole record split
    here can have (pure ACKs above all: one per two segments a download receives);
    then, with one helper call, a payload that does not start like a ClientHello
    (bulk data of an upload). The rest, and packets whose headers are not all in
    the skb's linear part, go on to the full tests ("ipv4" / "ipv6"), which repeat
    every test made here."""
    l2 = params.l2
    for family in ("ipv4", "ipv6"):
        v4 = family == "ipv4"
        p.label("screen_" + family)
        p.ldx(4, R2, R6, _SKB_DATA)
        p.ldx(4, R3, R6, _SKB_DATA_END)
        p.movr(R4, R2)
        p.alu(R4, "+", l2 + (20 if v4 else 60))
        p.jif(R4, ">", R3, family, reg=True)
        if v4:
            p.ldx(1, R1, R2, l2)
            p.alu(R1, "&", 0x0F)
            p.alu(R1, "<<", 2)  # IP header length, 0..60
            p.ldx(1, R4, R2, l2 + 9)
            p.jif(R4, "!=", 6, "next")
            p.ldx(2, R5, R2, l2 + 2)
            p.be(R5, 16)
            p.alu(R5, "-", R1, reg=True)  # TCP header and payload
            p.alu(R2, "+", R1, reg=True)
            p.movr(R4, R2)
            p.alu(R4, "+", l2 + 20)
            p.jif(R4, ">", R3, family, reg=True)
            tcp = l2
        else:
            p.ldx(1, R4, R2, l2 + 6)
            p.jif(R4, "!=", 6, "next")
            p.ldx(2, R5, R2, l2 + 4)
            p.be(R5, 16)
            p.mov(R1, 40)
            tcp = l2 + 40
        p.ldx(1, R4, R2, tcp + 13)
        p.alu(R4, "&", 0x02)  # SYN
        p.jif(R4, "!=", 0, "next")
        p.ldx(1, R4, R2, tcp + 12)
        p.alu(R4, ">>", 4)
        p.alu(R4, "<<", 2)
        p.alu(R5, "-", R4, reg=True)  # payload length
        p.jif(R5, "s<", params.min_payload, "next")
        p.jif(R5, ">", params.max_payload, "next")
        p.alu(R1, "+", R4, reg=True)  # IP and TCP header lengths
        p.ldx(2, R4, R2, tcp + 2)
        p.be(R4, 16)
        for port in params.ports:
            p.jif(R4, "==", port, f"screen_{family}_head")
        p.jmp("next")
        # The payload's first bytes (often not in the linear part: one helper call):
        # bulk data of the right sizes leaves here.
        p.label(f"screen_{family}_head")
        p.movr(R2, R1)
        p.alu(R2, "+", l2)
        p.movr(R3, FP)
        p.alu(R3, "+", _HEAD)
        p.mov(R4, 6)
        p.movr(R1, R6)
        p.call(asm.SKB_LOAD_BYTES)
        p.jif(R0, "!=", 0, family)
        for index, byte in ((0, 0x16), (1, 0x03), (5, 0x01)):
            p.ldx(1, R1, FP, _HEAD + index)
            p.jif(R1, "!=", byte, "next")
        p.jmp(family)


class Loaded:
    """The program for one link-header size, with its scratch and counter maps,
    as open file descriptors. Attach it with :meth:`attach`; each returned link
    keeps it on its interface until the link's descriptor is closed."""

    def __init__(self, params: Params) -> None:
        self.params = params
        self.scratch_fd = sc.map_create(sc.MAP_TYPE_PERCPU_ARRAY, 4, SCRATCH, 1)
        self.counters_fd = -1
        self.prog_fd = -1
        try:
            self.counters_fd = sc.map_create(sc.MAP_TYPE_PERCPU_ARRAY, 4, 8, len(COUNTERS))
            code = build(params, self.scratch_fd, self.counters_fd)
            self.prog_fd = sc.prog_load(
                sc.PROG_TYPE_SCHED_CLS, code, license="GPL", name="govpass_split"
            )
        except BaseException:
            self.close()
            raise

    def attach(self, ifindex: int) -> int:
        """Attaches to ``ifindex``'s egress (tcx); returns the link's descriptor."""
        return sc.link_create(self.prog_fd, ifindex, sc.ATTACH_TCX_EGRESS)

    def counters(self) -> dict[str, int]:
        """The counters, summed over CPUs."""
        cpus = sc.possible_cpus()
        out: dict[str, int] = {}
        for index, name in enumerate(COUNTERS):
            raw = sc.map_lookup(self.counters_fd, struct.pack("=I", index), 8 * cpus)
            out[name] = sum(struct.unpack(f"={cpus}Q", raw)) if raw else 0
        return out

    def close(self) -> None:
        for fd in (self.prog_fd, self.counters_fd, self.scratch_fd):
            if fd >= 0:
                os.close(fd)
        self.prog_fd = self.counters_fd = self.scratch_fd = -1

    def __enter__(self) -> Loaded:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
