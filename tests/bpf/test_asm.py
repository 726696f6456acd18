"""The eBPF assembler of ``govpass.bpf.asm``: pure encoding, no kernel involved.

Expected bytes are written out by hand from ``struct bpf_insn`` (little-endian):
u8 opcode, u8 dst | src << 4, s16 off, s32 imm."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from govpass.bpf import asm
from govpass.bpf.asm import FP, R0, R1, R2, R6, R9, AsmError, Program


def one(emit: Callable[[Program], None]) -> bytes:
    p = Program()
    emit(p)
    return p.assemble()


def insn(code: bytes) -> tuple[int, int, int, int]:
    """(opcode, regs byte, off, imm) of one 8-byte instruction."""
    op, regs, off, imm = struct.unpack("<BBhi", code)
    return op, regs, off, imm


def slots(code: bytes) -> list[bytes]:
    assert len(code) % 8 == 0
    return [code[i : i + 8] for i in range(0, len(code), 8)]


# ------------------------------------------------------------------ encoding


@pytest.mark.parametrize(
    ("emit", "expected"),
    [
        (lambda p: p.exit(), "95 00 0000 00000000"),
        (lambda p: p.mov(R1, 5), "b7 01 0000 05000000"),
        (lambda p: p.mov(R0, -1), "b7 00 0000 ffffffff"),
        (lambda p: p.movr(R6, R1), "bf 16 0000 00000000"),
        (lambda p: p.movr(R6, R1, bits=32), "bc 16 0000 00000000"),
        (lambda p: p.alu(R2, "+", -8), "07 02 0000 f8ffffff"),
        (lambda p: p.alu(R9, "-", R1, reg=True, bits=32), "1c 19 0000 00000000"),
        (lambda p: p.alu(R1, "<<", 2), "67 01 0000 02000000"),
        (lambda p: p.alu(R1, "&", 0x3FFF), "57 01 0000 ff3f0000"),
        (lambda p: p.be(R9, 32), "dc 09 0000 20000000"),
        (lambda p: p.be(R1, 16), "dc 01 0000 10000000"),
        (lambda p: p.ldx(4, R1, FP, -8), "61 a1 f8ff 00000000"),
        (lambda p: p.ldx(1, R1, FP, -64), "71 a1 c0ff 00000000"),
        (lambda p: p.ldx(2, R1, R0, 6), "69 01 0600 00000000"),
        (lambda p: p.stx(8, FP, -16, R1), "7b 1a f0ff 00000000"),
        (lambda p: p.st(4, FP, -4, 0x12345678), "62 0a fcff 78563412"),
        (lambda p: p.call(asm.SKB_LOAD_BYTES), "85 00 0000 1a000000"),
    ],
)
def test_single_instruction_encoding(emit: Callable[[Program], None], expected: str) -> None:
    assert one(emit) == bytes.fromhex(expected.replace(" ", ""))


def test_ret_is_mov_r0_then_exit() -> None:
    assert one(lambda p: p.ret(1)) == bytes.fromhex("b7000000010000009500000000000000")


def test_conditional_jump_opcodes() -> None:
    p = Program()
    p.jif(R0, "!=", 0, "end")  # JMP | JNE | K
    p.jif(R0, ">", R1, "end", reg=True)  # JMP | JGT | X
    p.jif(R1, "s<=", 0, "end")  # JMP | JSLE | K
    p.jmp("end")  # JMP | JA
    p.label("end")
    p.exit()
    code = slots(p.assemble())
    assert [insn(c) for c in code[:4]] == [
        (0x55, 0x00, 3, 0),
        (0x2D, 0x10, 2, 0),
        (0xD5, 0x01, 1, 0),
        (0x05, 0x00, 0, 0),
    ]


# ------------------------------------------------------------------ labels


def test_forward_label_offset_is_target_minus_pc_minus_one() -> None:
    p = Program()
    p.jif(R1, "==", 7, "out")  # pc 0
    p.mov(R0, 0)  # pc 1
    p.mov(R0, 0)  # pc 2
    p.label("out")  # = 3
    p.exit()  # pc 3
    code = slots(p.assemble())
    assert insn(code[0]) == (0x15, 0x01, 2, 7)


def test_backward_label_gives_a_negative_offset() -> None:
    p = Program()
    p.mov(R0, 0)  # pc 0
    p.label("top")  # = 1
    p.alu(R0, "+", 1)  # pc 1
    p.jif(R0, "<", 10, "top")  # pc 2 -> 1 - 2 - 1 = -2
    p.exit()  # pc 3
    code = slots(p.assemble())
    assert insn(code[2]) == (0xA5, 0x00, -2, 10)
    assert code[2] == bytes.fromhex("a500feff0a000000")


def test_jump_to_the_next_instruction_has_offset_zero() -> None:
    p = Program()
    p.jmp("next")
    p.label("next")
    p.exit()
    assert slots(p.assemble())[0] == bytes.fromhex("0500000000000000")


def test_labels_count_both_slots_of_ld_imm64() -> None:
    p = Program()
    p.jmp("after")  # pc 0
    p.ld_imm64(R1, 1 << 40)  # pc 1 and 2
    p.label("after")  # = 3
    p.exit()
    code = slots(p.assemble())
    assert len(code) == 4
    assert insn(code[0]) == (0x05, 0x00, 2, 0)


# ------------------------------------------------------------------ ld_imm64


def test_ld_imm64_takes_two_slots_high_half_in_the_second() -> None:
    code = one(lambda p: p.ld_imm64(R1, 0x1122334455667788))
    assert slots(code) == [
        bytes.fromhex("1801000088776655"),
        bytes.fromhex("0000000044332211"),
    ]


def test_ld_imm64_wraps_values_with_the_top_bit_set() -> None:
    code = slots(one(lambda p: p.ld_imm64(R2, 0xFFFFFFFF80000000)))
    assert insn(code[0]) == (0x18, 0x02, 0, -(2**31))
    assert insn(code[1]) == (0x00, 0x00, 0, -1)
    assert one(lambda p: p.ld_imm64(R2, -1)) == bytes.fromhex("18020000ffffffff00000000ffffffff")


def test_ld_map_fd_marks_the_pseudo_map_fd_source() -> None:
    code = slots(one(lambda p: p.ld_map_fd(R1, 7)))
    assert code == [bytes.fromhex("1811000007000000"), bytes(8)]


# ------------------------------------------------------------------ errors


def test_unknown_label_is_an_error_at_assembly() -> None:
    p = Program()
    p.jmp("nowhere")
    p.exit()
    with pytest.raises(AsmError, match="nowhere"):
        p.assemble()


def test_label_placed_twice() -> None:
    p = Program()
    p.label("x")
    p.exit()
    with pytest.raises(AsmError, match="twice"):
        p.label("x")


@pytest.mark.parametrize("imm", [2**31, -(2**31) - 1, 2**32])
def test_immediate_must_fit_32_bits(imm: int) -> None:
    with pytest.raises(AsmError, match="32 bits"):
        Program().mov(R0, imm)
    with pytest.raises(AsmError, match="32 bits"):
        Program().jif(R0, "==", imm, "x")
    with pytest.raises(AsmError, match="32 bits"):
        Program().st(4, FP, -4, imm)


@pytest.mark.parametrize("imm", [2**31 - 1, -(2**31)])
def test_immediate_limits_are_accepted(imm: int) -> None:
    assert insn(one(lambda p: p.mov(R0, imm)))[3] == imm


def test_asm_error_is_a_value_error() -> None:
    assert issubclass(AsmError, ValueError)
