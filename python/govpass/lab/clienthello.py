"""A deliberately small TLS ClientHello reader for the lab's censor and wire checks.

It is independent of govpass' Rust core on purpose: the lab must not share a bug with
the thing it tests. It reads only the bytes it is given (one packet, for the censor),
exactly like a per-packet DPI box does.
"""

from __future__ import annotations

from dataclasses import dataclass

RECORD_HANDSHAKE = 22
HANDSHAKE_CLIENT_HELLO = 1
EXT_SERVER_NAME = 0


@dataclass(frozen=True)
class HelloView:
    """What the bytes said: ``sni`` if found, else ``reason`` why not."""

    sni: str | None
    reason: str
    record_len: int | None = None  # length of the first record's body, if the header was there


class _Short(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else min(end, len(data))
        self.limit = end if end is not None else len(data)

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise _Short
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u24(self) -> int:
        return int.from_bytes(self.take(3), "big")

    def sub(self, n: int) -> _Reader:
        """A reader over the next ``n`` bytes (may run past the data: reads then fail short)."""
        r = _Reader(self.data, self.pos, self.pos + n)
        r.end = min(r.end, self.end)  # never read past what the parent may read
        self.pos += n
        return r


def record_header(data: bytes) -> tuple[int, int] | None:
    """(content type, body length) of a TLS record header at the start, if it looks like one."""
    if len(data) < 5 or data[1] != 3 or data[2] > 4:
        return None
    return data[0], int.from_bytes(data[3:5], "big")


def read_hello(data: bytes) -> HelloView:
    """Find the SNI in a TLS record that starts at ``data[0]``, using only these bytes."""
    hdr = record_header(data)
    if hdr is None:
        return HelloView(None, "not a TLS record" if len(data) >= 5 else "short record header")
    ctype, rlen = hdr
    if ctype != RECORD_HANDSHAKE:
        return HelloView(None, f"record type {ctype}", rlen)
    rec = _Reader(data, 5, 5 + rlen)
    try:
        if rec.u8() != HANDSHAKE_CLIENT_HELLO:
            return HelloView(None, "not a ClientHello", rlen)
        body = rec.sub(rec.u24())
        body.take(2 + 32)  # legacy_version, random
        body.take(body.u8())  # session id
        body.take(body.u16())  # cipher suites
        body.take(body.u8())  # compression methods
        if body.pos >= body.limit:
            return HelloView(None, "no extensions", rlen)
        exts = body.sub(body.u16())
        while exts.pos < exts.limit:
            etype = exts.u16()
            ext = exts.sub(exts.u16())
            if etype != EXT_SERVER_NAME:
                continue
            names = ext.sub(ext.u16())
            while names.pos < names.limit:
                ntype = names.u8()
                name = names.take(names.u16())
                if ntype == 0:
                    return HelloView(name.decode("ascii", "replace"), "sni", rlen)
            return HelloView(None, "empty server_name", rlen)
        return HelloView(None, "no server_name extension", rlen)
    except _Short:
        return HelloView(None, "truncated before server_name", rlen)


def name_listed(sni: str, listed: list[str] | tuple[str, ...] | set[str]) -> bool:
    """Exact or subdomain match, case-insensitive, ignoring a trailing dot."""
    host = sni.lower().rstrip(".")
    for entry in listed:
        base = entry.lower().rstrip(".")
        if host == base or host.endswith("." + base):
            return True
    return False
