"""A small eBPF assembler: enough instructions for govpass's kernel programs.

Each method of :class:`Program` appends one instruction (``ld_map_fd`` two);
jumps name a label that :meth:`Program.label` places later or earlier, and
:meth:`Program.assemble` resolves them into the 8-byte encoding the kernel
loads (``struct bpf_insn``, little-endian hosts only: x86_64 and aarch64).

Registers are plain ints ``R0`` .. ``R10``; ``R10`` is the read-only frame
pointer, ``R1``-``R5`` are arguments and are clobbered by calls, ``R6``-``R9``
survive calls.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass, field

R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)
FP = R10

# instruction classes
_LD, _LDX, _ST, _STX, _ALU, _JMP, _ALU64 = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x07
# sizes
SIZES = {1: 0x10, 2: 0x08, 4: 0x00, 8: 0x18}
_MEM, _IMM = 0x60, 0x00
_K, _X = 0x00, 0x08
ALU_OPS = {
    "+": 0x00, "-": 0x10, "*": 0x20, "|": 0x40, "&": 0x50,
    "<<": 0x60, ">>": 0x70, "^": 0xA0, "=": 0xB0, "s>>": 0xC0,
}  # fmt: skip
JMP_OPS = {
    "==": 0x10, ">": 0x20, ">=": 0x30, "!=": 0x50, "s>": 0x60, "s>=": 0x70,
    "<": 0xA0, "<=": 0xB0, "s<": 0xC0, "s<=": 0xD0,
}  # fmt: skip
_JA, _CALL, _EXIT, _END, _TO_BE = 0x00, 0x80, 0x90, 0xD0, 0x08
_PSEUDO_MAP_FD = 1

# helper function ids (include/uapi/linux/bpf.h)
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
KTIME_GET_NS = 5
SKB_STORE_BYTES = 9
L3_CSUM_REPLACE = 10
L4_CSUM_REPLACE = 11
CLONE_REDIRECT = 13
SKB_LOAD_BYTES = 26
CSUM_DIFF = 28
SKB_CHANGE_TAIL = 38

_S32 = range(-(2**31), 2**31)


class AsmError(ValueError):
    """A program the assembler cannot encode (bad operand, unknown label)."""


@dataclass
class _Insn:
    op: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    target: str | None = None  # label for jumps, resolved by assemble()


@dataclass
class Program:
    """An instruction list under construction."""

    insns: list[_Insn] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)

    def _add(self, op: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> None:
        if imm not in _S32:
            raise AsmError(f"immediate {imm} does not fit 32 bits")
        self.insns.append(_Insn(op, dst, src, off, imm))

    # -- arithmetic ---------------------------------------------------------
    def alu(self, dst: int, op: str, src_or_imm: int, *, reg: bool = False, bits: int = 64) -> None:
        """``dst op= src`` (``reg=True``: a register) or ``dst op= imm``."""
        cls = _ALU64 if bits == 64 else _ALU
        self._add(
            cls | ALU_OPS[op] | (_X if reg else _K),
            dst,
            src_or_imm if reg else 0,
            imm=0 if reg else src_or_imm,
        )

    def mov(self, dst: int, imm: int) -> None:
        self.alu(dst, "=", imm)

    def movr(self, dst: int, src: int, bits: int = 64) -> None:
        self.alu(dst, "=", src, reg=True, bits=bits)

    def be(self, dst: int, bits: int) -> None:
        """Network to host order of the low ``bits`` (16, 32 or 64) of ``dst``."""
        if sys.byteorder != "little":
            raise AsmError("the assembler encodes for little-endian hosts only")
        self._add(_ALU | _END | _TO_BE, dst, imm=bits)

    # -- memory --------------------------------------------------------------
    def ldx(self, size: int, dst: int, src: int, off: int) -> None:
        """``dst = *(uSIZE *)(src + off)``."""
        self._add(_LDX | SIZES[size] | _MEM, dst, src, off)

    def stx(self, size: int, dst: int, off: int, src: int) -> None:
        """``*(uSIZE *)(dst + off) = src``."""
        self._add(_STX | SIZES[size] | _MEM, dst, src, off)

    def st(self, size: int, dst: int, off: int, imm: int) -> None:
        """``*(uSIZE *)(dst + off) = imm``."""
        self._add(_ST | SIZES[size] | _MEM, dst, 0, off, imm)

    def ld_imm64(self, dst: int, value: int, *, src: int = 0) -> None:
        """``dst = value`` for any 64-bit value (two instruction slots)."""
        value &= 2**64 - 1
        low, high = value & 0xFFFFFFFF, value >> 32
        self.insns.append(_Insn(_LD | SIZES[8] | _IMM, dst, src, 0, _s32(low)))
        self.insns.append(_Insn(0, 0, 0, 0, _s32(high)))

    def ld_map_fd(self, dst: int, map_fd: int) -> None:
        """``dst`` = the map behind file descriptor ``map_fd`` (resolved at load)."""
        self.ld_imm64(dst, map_fd, src=_PSEUDO_MAP_FD)

    # -- control flow --------------------------------------------------------
    def label(self, name: str) -> None:
        if name in self.labels:
            raise AsmError(f"label {name!r} placed twice")
        self.labels[name] = len(self.insns)

    def jmp(self, target: str) -> None:
        self.insns.append(_Insn(_JMP | _JA, target=target))

    def jif(self, dst: int, op: str, src_or_imm: int, target: str, *, reg: bool = False) -> None:
        """Jump to ``target`` when ``dst op src`` (64-bit compare)."""
        insn = _Insn(
            _JMP | JMP_OPS[op] | (_X if reg else _K),
            dst,
            src_or_imm if reg else 0,
            imm=0 if reg else src_or_imm,
            target=target,
        )
        if not reg and src_or_imm not in _S32:
            raise AsmError(f"immediate {src_or_imm} does not fit 32 bits")
        self.insns.append(insn)

    def call(self, helper: int) -> None:
        self._add(_JMP | _CALL, imm=helper)

    def exit(self) -> None:
        self._add(_JMP | _EXIT)

    def ret(self, value: int) -> None:
        self.mov(R0, value)
        self.exit()

    # -- output --------------------------------------------------------------
    def assemble(self) -> bytes:
        out = bytearray()
        for pc, insn in enumerate(self.insns):
            off = insn.off
            if insn.target is not None:
                if insn.target not in self.labels:
                    raise AsmError(f"jump to unknown label {insn.target!r}")
                off = self.labels[insn.target] - pc - 1
            out += struct.pack("<BBhi", insn.op, (insn.src << 4) | insn.dst, off, insn.imm)
        return bytes(out)


def _s32(value: int) -> int:
    return value - 2**32 if value >= 2**31 else value
