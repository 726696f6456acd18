#!/usr/bin/env python3
"""Experiment: what connections/s would a splitter that never leaves the kernel give?

The lab benchmark puts govpass at about x0.90 of no splitter in connections/s, and
its queue-and-pass rounds show the cost is the hand-off of each ClientHello to a
user-space worker and back, not the split itself. This experiment measures that
claim: a small tc egress eBPF program (built here, IPv4 only, not part of govpass)
cuts a ClientHello that arrives whole in one packet into a 5-byte segment and the
rest, in the kernel, the way govpass's default split does on the wire. Rounds of
no splitter, govpass (`govpass run --workers 1`) and the tc program alternate
(ABC CBA ...) in one lab; each round is one wrk connections/s measurement.

What the program does, per packet on the client's egress: an IPv4 TCP packet with
no IP options whose payload is exactly one ClientHello record (``16 03 .. .. ..
01``, record length = payload length, at most 1460 bytes, not GSO) is copied out
(payload after the 5th byte, into a per-CPU scratch map), truncated to the first
5 bytes (IP length, IP checksum and the TCP pseudo-header sum updated),
cloned out of the interface (``bpf_clone_redirect``), then grown back into the
rest: payload moved in, sequence number + 5, lengths and sums updated. It assumes
checksum offload (CHECKSUM_PARTIAL, as on veth): the TCP sum over the payload is
computed after it. A wire check with tcpdump confirms 5-byte first segments
before the rounds start.

What it does not do, and govpass does: hellos over several packets, IPv6, split
positions, host lists, statistics, fail-open on doubt, devices without checksum
offload.

Run as root from the repository: ``python3 ci/bench_tc_split.py [--rounds 6]``.
Writes the ``## Kernel split (experiment)`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "python"))

import bench_lab  # noqa: E402
from bench_common import run_meta, write_section  # noqa: E402
from govpass.bpf import asm  # noqa: E402
from govpass.bpf import syscall as sc  # noqa: E402
from govpass.bpf.asm import FP, R0, R1, R2, R3, R4, R5, R6, R7, R8, R9  # noqa: E402

KINDS = ("none", "govpass", "tc")
HEADING = "Kernel split (experiment)"

PROG_TYPE_SCHED_CLS = 3
MAP_TYPE_PERCPU_ARRAY = 6
SKB_STORE_BYTES, L3_CSUM_REPLACE, L4_CSUM_REPLACE, CLONE_REDIRECT, SKB_CHANGE_TAIL = (
    9,
    10,
    11,
    13,
    38,
)
F_PSEUDO_HDR = 0x10
SKB_PROTOCOL, SKB_IFINDEX, SKB_GSO_SEGS = 16, 40, 164  # offsets in struct __sk_buff
ETH = 14  # the veth's Ethernet header
IP_TOT_LEN, IP_CSUM = ETH + 2, ETH + 10
TCP = ETH + 20  # no IP options
TCP_SEQ, TCP_CSUM = TCP + 4, TCP + 16
MAX_PAYLOAD = 1460
SCRATCH = 1536

# Stack slots (offsets from the frame pointer).
_IP, _TCP, _HEAD, _KEY, _TMP = -96, -72, -48, -40, -32


def build(map_fd: int) -> bytes:
    """The tc program; registers kept across calls: R6 skb, R7 payload offset,
    R8 payload length, R9 the scratch buffer."""
    p = asm.Program()
    p.movr(R6, R1)

    def call(helper: int, *args: tuple[str, int]) -> None:
        """R1 = skb, then R2.. from ("imm", n) / ("reg", r) / ("fp", off)."""
        p.movr(R1, R6)
        for reg, (kind, value) in zip((R2, R3, R4, R5), args, strict=False):
            if kind == "imm":
                p.mov(reg, value)
            elif kind == "reg":
                p.movr(reg, value)
            else:
                p.movr(reg, FP)
                p.alu(reg, "+", value)
        p.call(helper)

    def load(offset_reg: int | None, offset: int, slot: int, size: int) -> None:
        where = ("imm", offset) if offset_reg is None else ("reg", offset_reg)
        call(asm.SKB_LOAD_BYTES, where, ("fp", slot), ("imm", size))
        p.jif(R0, "!=", 0, "pass")

    def bounded_rest(reg: int) -> None:
        """``reg`` = payload length - 5, proven to lie in 1..MAX_PAYLOAD-5."""
        p.movr(reg, R8)
        p.alu(reg, "-", 5)
        p.jif(reg, "<", 1, "pass")
        p.jif(reg, ">", MAX_PAYLOAD - 5, "pass")

    def set_lengths(ip_old: int, ip_new: int, tcp_old: int, tcp_new: int) -> None:
        """IP total length and the TCP pseudo-header sum from the values (host
        order) in registers ``ip_old``.. (R2-R5, clobbered)."""
        for reg in (ip_old, ip_new, tcp_old, tcp_new):
            p.be(reg, 16)
        p.stx(2, FP, _TMP, ip_new)
        p.stx(2, FP, _TMP + 2, tcp_old)
        p.stx(2, FP, _TMP + 4, tcp_new)
        p.movr(R3, ip_old)
        p.ldx(2, R4, FP, _TMP)
        call(L3_CSUM_REPLACE, ("imm", IP_CSUM), ("reg", R3), ("reg", R4), ("imm", 2))
        call(SKB_STORE_BYTES, ("imm", IP_TOT_LEN), ("fp", _TMP), ("imm", 2), ("imm", 0))
        p.ldx(2, R3, FP, _TMP + 2)
        p.ldx(2, R4, FP, _TMP + 4)
        pseudo = ("imm", F_PSEUDO_HDR | 2)
        call(L4_CSUM_REPLACE, ("imm", TCP_CSUM), ("reg", R3), ("reg", R4), pseudo)

    # -- is it a whole ClientHello in one IPv4 packet? -------------------------------
    p.ldx(4, R1, R6, SKB_PROTOCOL)
    p.jif(R1, "!=", 0x0008, "pass")  # htons(ETH_P_IP)
    p.ldx(4, R1, R6, SKB_GSO_SEGS)
    p.jif(R1, ">", 1, "pass")
    load(None, ETH, _IP, 20)
    p.ldx(1, R1, FP, _IP)
    p.jif(R1, "!=", 0x45, "pass")
    p.ldx(1, R1, FP, _IP + 9)
    p.jif(R1, "!=", 6, "pass")
    p.ldx(2, R1, FP, _IP + 6)
    p.be(R1, 16)
    p.alu(R1, "&", 0x3FFF)
    p.jif(R1, "!=", 0, "pass")
    load(None, TCP, _TCP, 20)
    p.ldx(1, R7, FP, _TCP + 12)
    p.alu(R7, ">>", 4)
    p.alu(R7, "<<", 2)
    p.jif(R7, "<", 20, "pass")
    p.ldx(2, R8, FP, _IP + 2)
    p.be(R8, 16)
    p.alu(R8, "-", 20)
    p.alu(R8, "-", R7, reg=True)
    p.alu(R7, "+", TCP)
    p.jif(R8, "s<", 6, "pass")
    p.jif(R8, ">", MAX_PAYLOAD, "pass")
    load(R7, 0, _HEAD, 6)
    for index, byte in ((0, 0x16), (1, 0x03), (5, 0x01)):
        p.ldx(1, R1, FP, _HEAD + index)
        p.jif(R1, "!=", byte, "pass")
    p.ldx(1, R1, FP, _HEAD + 3)
    p.alu(R1, "<<", 8)
    p.ldx(1, R2, FP, _HEAD + 4)
    p.alu(R1, "|", R2, reg=True)
    p.alu(R1, "+", 5)
    p.jif(R1, "!=", R8, "pass", reg=True)

    # -- keep the bytes after the first 5 ----------------------------------------------
    p.st(4, FP, _KEY, 0)
    p.ld_map_fd(R1, map_fd)
    p.movr(R2, FP)
    p.alu(R2, "+", _KEY)
    p.call(asm.MAP_LOOKUP_ELEM)
    p.jif(R0, "==", 0, "pass")
    p.movr(R9, R0)
    bounded_rest(R4)
    p.movr(R2, R7)
    p.alu(R2, "+", 5)
    call(asm.SKB_LOAD_BYTES, ("reg", R2), ("reg", R9), ("reg", R4))
    p.jif(R0, "!=", 0, "pass")

    # -- the first segment: 5 bytes, cloned out --------------------------------------
    p.movr(R2, R7)
    p.alu(R2, "+", 5)
    call(SKB_CHANGE_TAIL, ("reg", R2), ("imm", 0))
    p.jif(R0, "!=", 0, "pass")
    p.movr(R2, R7)  # IP length: old = headers + payload, new = headers + 5
    p.alu(R2, "-", ETH)
    p.alu(R2, "+", R8, reg=True)
    p.movr(R3, R7)
    p.alu(R3, "-", ETH - 5)
    p.movr(R4, R2)  # TCP length: IP length - 20
    p.alu(R4, "-", 20)
    p.movr(R5, R3)
    p.alu(R5, "-", 20)
    set_lengths(R2, R3, R4, R5)
    p.ldx(4, R2, R6, SKB_IFINDEX)
    call(CLONE_REDIRECT, ("reg", R2), ("imm", 0))

    # -- the rest: the original, grown back and refilled ------------------------------
    p.movr(R2, R7)
    p.alu(R2, "+", R8, reg=True)
    p.alu(R2, "-", 5)
    call(SKB_CHANGE_TAIL, ("reg", R2), ("imm", 0))
    p.jif(R0, "!=", 0, "drop")  # the first 5 bytes left already: let TCP resend
    bounded_rest(R4)
    call(SKB_STORE_BYTES, ("reg", R7), ("reg", R9), ("reg", R4), ("imm", 0))
    p.movr(R2, R7)  # IP length: old = headers + 5, new = headers + payload - 5
    p.alu(R2, "-", ETH - 5)
    p.movr(R3, R7)
    p.alu(R3, "-", ETH + 5)
    p.alu(R3, "+", R8, reg=True)
    p.movr(R4, R2)
    p.alu(R4, "-", 20)
    p.movr(R5, R3)
    p.alu(R5, "-", 20)
    set_lengths(R2, R3, R4, R5)
    p.ldx(4, R2, FP, _TCP + 4)  # sequence number + 5
    p.be(R2, 32)
    p.alu(R2, "+", 5, bits=32)
    p.be(R2, 32)
    p.stx(4, FP, _TMP, R2)
    p.ldx(4, R3, FP, _TCP + 4)
    p.ldx(4, R4, FP, _TMP)
    call(L4_CSUM_REPLACE, ("imm", TCP_CSUM), ("reg", R3), ("reg", R4), ("imm", 4))
    call(SKB_STORE_BYTES, ("imm", TCP_SEQ), ("fp", _TMP), ("imm", 4), ("imm", 0))
    p.label("pass")
    p.ret(0)  # TC_ACT_OK
    p.label("drop")
    p.ret(2)  # TC_ACT_SHOT
    return p.assemble()


class TcSplit:
    """The program loaded and pinned on a private bpf file system, attached and
    detached on the lab client's interface with `tc`."""

    def __init__(self, lab: Any) -> None:
        self.lab = lab
        self.fs = Path(tempfile.mkdtemp(prefix="govpass-tcsplit-"))
        subprocess.run(["mount", "-t", "bpf", "bpf", str(self.fs)], check=True)
        self.map_fd = sc.map_create(MAP_TYPE_PERCPU_ARRAY, 4, SCRATCH, 1)
        self.prog_fd = sc.prog_load(PROG_TYPE_SCHED_CLS, build(self.map_fd), name="tc_split")
        self.pin = self.fs / "prog"
        sc.obj_pin(self.prog_fd, str(self.pin))
        self.dev = lab.iface("client")

    def tc(self, *argv: str, check: bool = True) -> None:
        cmd = ["ip", "netns", "exec", self.lab.ns("client"), "tc", *argv]
        subprocess.run(cmd, check=check, capture_output=True, text=True)

    def attach(self) -> None:
        self.tc("qdisc", "add", "dev", self.dev, "clsact")
        self.tc(
            "filter", "add", "dev", self.dev, "egress", "bpf", "direct-action",
            "object-pinned", str(self.pin),
        )  # fmt: skip

    def detach(self) -> None:
        self.tc("qdisc", "del", "dev", self.dev, "clsact", check=False)

    def close(self) -> None:
        self.detach()
        os.close(self.prog_fd)
        os.close(self.map_fd)
        subprocess.run(["umount", str(self.fs)], check=False)
        self.fs.rmdir()


def wire_check(lab: Any, bench: Any, dev: str) -> list[int]:
    """Payload sizes of the first client data packets to port 443 while wrk runs."""
    dump = subprocess.Popen(
        ["ip", "netns", "exec", lab.ns("client"), "tcpdump", "-i", dev, "-nn", "-c", "8",
         "tcp dst port 443 and (ip[2:2] - ((ip[0]&0xf)<<2) - ((tcp[12]&0xf0)>>2)) > 0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    time.sleep(1.0)
    bench.wrk(1)
    try:
        out, _ = dump.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        dump.kill()
        out, _ = dump.communicate()
    return [int(n) for n in re.findall(r"length (\d+)$", out, flags=re.M)]


def measure(args: argparse.Namespace) -> tuple[dict[str, list[float]], list[int]]:
    results: dict[str, list[float]] = {k: [] for k in KINDS}
    with bench_lab.lab_bench(["--duration", str(args.duration)]) as bench:
        lab = bench.lab
        split = TcSplit(lab)
        try:
            split.attach()
            try:
                sizes = wire_check(lab, bench, split.dev)
            finally:
                split.detach()
            # Every hello leaves as 5 bytes then the rest (wrk's 16 connections interleave).
            if not sizes or sizes.count(5) * 2 < len(sizes):
                raise SystemExit(f"bench_tc_split: no 5-byte first segments on the wire: {sizes}")
            for index in range(args.rounds):
                order = KINDS if index % 2 == 0 else KINDS[::-1]
                for kind in order:
                    if kind == "tc":
                        split.attach()
                    elif kind == "govpass":
                        bench.start_daemon([])
                    try:
                        rps = bench.wrk(args.duration)["rps"]
                    finally:
                        if kind == "tc":
                            split.detach()
                        elif kind == "govpass":
                            bench.stop_daemon()
                    results[kind].append(rps)
                    print(f"round {index + 1} {kind:8s} conn/s {rps:7.0f}", flush=True)
        finally:
            split.close()
    return results, sizes


def section(results: dict[str, list[float]], sizes: list[int], meta: dict[str, Any]) -> str:
    base = sum(results["none"])
    rows = [
        f"| {kind} | {statistics.mean(results[kind]):,.0f} | x{sum(results[kind]) / base:.3f} | "
        f"{[round(x) for x in results[kind]]} |"
        for kind in KINDS
    ]
    m = meta["machine"]
    return "\n".join(
        [
            f"## {HEADING}",
            "",
            "New TLS connections/s (`wrk -t1 -c16`, every request a new connection, as in "
            "the Lab section) with no splitter (`none`), with govpass (`govpass run "
            "--workers 1`: the ClientHello goes to user space and back) and with an "
            "experimental tc egress eBPF program that makes the same split in the kernel "
            "(`tc`; IPv4 hellos whole in one packet only, not part of govpass: see the "
            "script's docstring). Kinds alternate in ABC CBA order, "
            f"{meta['rounds']} rounds of {meta['duration']} s each.",
            "",
            f"- Command: `{meta['command']}`",
            f"- Machine: {m['cpu']}, {m['cpus']} CPUs, kernel {m['kernel']}, Python {m['python']}",
            f"- Date: {meta['date']}, commit {meta['commit']}",
            f"- Wire check with the tc program (payload bytes of the first client packets): "
            f"{sizes}",
            "",
            "| splitter | conn/s (mean) | vs none | per round |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=int, default=8, help="wrk seconds per round")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_tc_split: run as root (network namespaces, tc, bpf)", file=sys.stderr)
        return 2
    started = time.monotonic()
    results, sizes = measure(args)
    meta = run_meta("bench_tc_split.py", rounds=args.rounds, duration=args.duration)
    text = section(results, sizes, meta)
    print(text)
    print(f"took {time.monotonic() - started:.0f} s")
    if not args.no_write:
        write_section(REPO / "BENCHMARKS.md", HEADING, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
