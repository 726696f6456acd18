"""A small model of the kernel's xt_u32 match, to test u32 expressions on real bytes.

Follows net/netfilter/xt_u32.c: every `&&`-separated test starts at offset 0;
a read needs 4 bytes inside the packet, else the whole match is false; `A@B`
moves the base by the value computed so far and reads B relative to it.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\s*(0x[0-9a-fA-F]+|\d+|&|<<|>>|@)")


def _tokens(text: str) -> list[str]:
    pos, out = 0, []
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"bad u32 location at {text[pos:]!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


def _read(packet: bytes, offset: int) -> int | None:
    if offset < 0 or offset + 4 > len(packet):
        return None
    return int.from_bytes(packet[offset : offset + 4], "big")


def _test(packet: bytes, test: str) -> bool:
    location, _, values = test.partition("=")
    toks = _tokens(location)
    at = 0
    val = _read(packet, int(toks[0], 0))
    if val is None:
        return False
    i = 1
    while i < len(toks):
        op, number = toks[i], int(toks[i + 1], 0)
        if op == "&":
            val &= number
        elif op == "<<":
            val = (val << number) & 0xFFFFFFFF
        elif op == ">>":
            val >>= number
        else:  # "@"
            at += val
            read = _read(packet, at + number)
            if read is None:
                return False
            val = read
        i += 2
    for rng in values.split(","):
        lo, _, hi = rng.partition(":")
        if int(lo, 0) <= val <= int(hi or lo, 0):
            return True
    return False


def u32_match(expression: str, packet: bytes) -> bool:
    return all(_test(packet, test) for test in expression.split("&&"))
