"""``--block-quic listed``: drop the QUIC Initials of names that would be split.

The rules queue the first few outbound QUIC long-header packets of a UDP flow
(Initial or 0-RTT by their first byte). For each one :class:`QuicFilter`
removes the Initial packet protection (RFC 9001 §5: the keys come from the
Destination Connection ID, so anyone on the path can do it), reassembles the
CRYPTO stream, reads the SNI of the ClientHello and asks the engine's profiles
what a TCP flow to the same destination with that name would get. ``split``:
the packet is dropped, the handshake stalls and the browser falls back to
TCP, where govpass splits the hello. Anything else, or anything undecidable
(unknown version, not decryptable, name not complete yet): accepted.

A ClientHello may span several Initial packets (a post-quantum key share
makes it ~2 KB) and Chrome shuffles its CRYPTO frames, so the stream is kept
per connection (addresses, ports, DCID) for a few seconds, bounded in count
and bytes. The decision is made on the packet that completes the name and
remembered: retransmissions and 0-RTT packets of a dropped connection are
dropped too.

Pure: bytes and a timestamp in, a verdict out; no sockets, no clock.
"""

from __future__ import annotations

import hmac
import re
import socket
import struct
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from hashlib import sha256

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from govpass._core import client_hello_sni

QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF  # RFC 9369

# Long-header packet types, the two bits after the form and fixed bits.
INITIAL, ZERO_RTT, HANDSHAKE, RETRY = "initial", "0rtt", "handshake", "retry"


@dataclass(frozen=True)
class Version:
    """What differs between QUIC versions for a client's Initial packets."""

    salt: bytes
    label_prefix: bytes  # b"quic " (v1) or b"quicv2 " (v2)
    types: tuple[str, str, str, str]  # packet type by the two type bits


VERSIONS: dict[int, Version] = {
    QUIC_V1: Version(
        bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),
        b"quic ",
        (INITIAL, ZERO_RTT, HANDSHAKE, RETRY),
    ),
    # RFC 9369 §3.2: the type bits were shuffled on purpose.
    QUIC_V2: Version(
        bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),
        b"quicv2 ",
        (RETRY, INITIAL, ZERO_RTT, HANDSHAKE),
    ),
}

MAX_CID_LEN = 20  # RFC 9000 §17.2, for versions 1 and 2
SAMPLE_LEN = 16

# Frames allowed in an Initial packet (RFC 9000 §12.4, Table 3).
PADDING, PING, ACK, ACK_ECN, CRYPTO = 0x00, 0x01, 0x02, 0x03, 0x06
CONNECTION_CLOSE, CONNECTION_CLOSE_APP = 0x1C, 0x1D
_NOT_PADDING = re.compile(rb"[^\x00]")


class Malformed(ValueError):
    """The bytes are not what a well-formed packet would hold there."""


# ---------------------------------------------------------------- primitives


def varint(buf: bytes, pos: int) -> tuple[int, int]:
    """RFC 9000 §16 variable-length integer at `pos`: (value, position after it)."""
    if pos >= len(buf):
        raise Malformed("varint past the end")
    first = buf[pos]
    size = 1 << (first >> 6)
    end = pos + size
    if end > len(buf):
        raise Malformed("varint past the end")
    value = first & 0x3F
    for b in buf[pos + 1 : end]:
        value = (value << 8) | b
    return value, end


def hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label with an empty context, SHA-256, `length` <= 32."""
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    # One HKDF-Expand block is enough for up to 32 bytes: T(1) = HMAC(PRK, info | 0x01).
    return hmac.new(secret, info + b"\x01", sha256).digest()[:length]


@dataclass(frozen=True)
class InitialKeys:
    """The client's Initial packet protection keys for one DCID and version."""

    key: bytes
    iv: bytes
    hp: bytes

    @classmethod
    def derive(cls, dcid: bytes, version: Version) -> InitialKeys:
        initial_secret = hmac.new(version.salt, dcid, sha256).digest()  # HKDF-Extract
        client = hkdf_expand_label(initial_secret, b"client in", 32)
        p = version.label_prefix
        return cls(
            hkdf_expand_label(client, p + b"key", 16),
            hkdf_expand_label(client, p + b"iv", 12),
            hkdf_expand_label(client, p + b"hp", 16),
        )


@dataclass(frozen=True)
class LongHeader:
    """A long header as far as it is not protected: enough to find an Initial's
    packet number and the end of the packet within its datagram."""

    start: int  # offset of the packet in the datagram (packets may be coalesced)
    version: int
    dcid: bytes
    kind: str | None  # INITIAL, ZERO_RTT, HANDSHAKE, RETRY; None: unknown version
    pn_offset: int  # Initial, 0-RTT, Handshake: where the protected packet number starts
    end: int  # Initial, 0-RTT, Handshake: end of the packet; else end of the datagram


def parse_long_header(buf: bytes, start: int = 0) -> LongHeader:
    """Parses the long header of the packet at `start`; raises :class:`Malformed`."""
    if len(buf) < start + 7 or not buf[start] & 0x80:
        raise Malformed("not a long-header packet")
    (version,) = struct.unpack_from("!I", buf, start + 1)
    pos = start + 5
    dcid_len = buf[pos]
    dcid = buf[pos + 1 : pos + 1 + dcid_len]
    pos += 1 + dcid_len
    if pos >= len(buf):
        raise Malformed("truncated connection id")
    pos += 1 + buf[pos]  # the source connection id is not needed
    if pos > len(buf):
        raise Malformed("truncated connection id")
    known = VERSIONS.get(version)
    if known is None:
        return LongHeader(start, version, dcid, None, pos, len(buf))
    if dcid_len > MAX_CID_LEN or buf[start + 6 + dcid_len] > MAX_CID_LEN:
        raise Malformed("connection id longer than 20 bytes")
    kind = known.types[(buf[start] >> 4) & 0x03]
    if kind == RETRY:
        return LongHeader(start, version, dcid, kind, pos, len(buf))
    if kind == INITIAL:
        token_len, pos = varint(buf, pos)
        pos += token_len
    length, pos = varint(buf, pos)
    end = pos + length
    if end > len(buf):
        raise Malformed("packet longer than the datagram")
    return LongHeader(start, version, dcid, kind, pos, end)


def unprotect_initial(buf: bytes, header: LongHeader, keys: InitialKeys) -> bytes:
    """The plaintext (frames) of the Initial packet `header` describes.

    Raises :class:`Malformed` when the packet is too short for its protection
    or does not decrypt with `keys`."""
    pn_offset, end = header.pn_offset, header.end
    sample_at = pn_offset + 4  # as if the packet number were 4 bytes (RFC 9001 §5.4.2)
    if sample_at + SAMPLE_LEN > end:
        raise Malformed("packet too short for the header protection sample")
    sample = buf[sample_at : sample_at + SAMPLE_LEN]
    mask = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor().update(sample)
    first = buf[header.start] ^ (mask[0] & 0x0F)  # long header: the low 4 bits
    pn_len = (first & 0x03) + 1
    pn_bytes = bytes(
        b ^ m
        for b, m in zip(buf[pn_offset : pn_offset + pn_len], mask[1 : 1 + pn_len], strict=True)
    )
    # A client's Initial packet numbers start at 0 and stay small: the
    # truncated number is the full one.
    pn = int.from_bytes(pn_bytes, "big")
    nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
    aad = bytes([first]) + buf[header.start + 1 : pn_offset] + pn_bytes
    try:
        return AESGCM(keys.key).decrypt(nonce, buf[pn_offset + pn_len : end], aad)
    except InvalidTag as e:
        raise Malformed("does not decrypt with the Initial keys") from e


def crypto_frames(plain: bytes) -> list[tuple[int, bytes]]:
    """(offset, data) of every CRYPTO frame in an Initial packet's plaintext.

    Knows the frames an Initial may carry (PADDING, PING, ACK, CRYPTO,
    CONNECTION_CLOSE); any other frame, or one cut short, raises :class:`Malformed`."""
    out: list[tuple[int, bytes]] = []
    pos, n = 0, len(plain)
    while pos < n:
        kind = plain[pos]
        pos += 1
        if kind == PADDING:
            m = _NOT_PADDING.search(plain, pos)
            pos = m.start() if m else n
        elif kind == PING:
            continue
        elif kind in (ACK, ACK_ECN):
            _largest, pos = varint(plain, pos)
            _delay, pos = varint(plain, pos)
            ranges, pos = varint(plain, pos)
            _first, pos = varint(plain, pos)
            if ranges > n:  # each range takes at least 2 bytes
                raise Malformed("ACK range count larger than the packet")
            for _ in range(2 * ranges + (3 if kind == ACK_ECN else 0)):
                _, pos = varint(plain, pos)
        elif kind == CRYPTO:
            offset, pos = varint(plain, pos)
            length, pos = varint(plain, pos)
            if pos + length > n:
                raise Malformed("CRYPTO frame longer than the packet")
            out.append((offset, plain[pos : pos + length]))
            pos += length
        elif kind in (CONNECTION_CLOSE, CONNECTION_CLOSE_APP):
            _code, pos = varint(plain, pos)
            if kind == CONNECTION_CLOSE:
                _frame, pos = varint(plain, pos)
            reason, pos = varint(plain, pos)
            pos += reason
            if pos > n:
                raise Malformed("CONNECTION_CLOSE reason longer than the packet")
        else:
            raise Malformed(f"frame type {kind:#x} cannot be in an Initial packet")
    return out


class CryptoStream:
    """The CRYPTO data of one connection, keyed by offset (frames come in any
    order, repeated, overlapping). Bounded: data past `limit`, more than
    `max_pieces` pieces or more than 2 x `limit` bytes stored make :meth:`add`
    answer False, and the caller gives up on the connection."""

    def __init__(self, limit: int, max_pieces: int = 64) -> None:
        self.limit = limit
        self.max_pieces = max_pieces
        self.stored = 0
        self._pieces: dict[int, bytes] = {}

    def add(self, offset: int, data: bytes) -> bool:
        if not data:
            return True
        if offset + len(data) > self.limit or self.stored + len(data) > 2 * self.limit:
            return False
        old = self._pieces.get(offset)
        if old is None:
            if len(self._pieces) >= self.max_pieces:
                return False
        elif len(old) >= len(data):
            return True  # a retransmission of what is here
        self._pieces[offset] = data
        self.stored += len(data) - (len(old) if old else 0)
        return True

    def prefix(self) -> bytes:
        """The contiguous data from offset 0 (where pieces overlap, the first wins)."""
        out = bytearray()
        for offset in sorted(self._pieces):
            if offset > len(out):
                break
            data = self._pieces[offset]
            if offset + len(data) > len(out):
                out += data[len(out) - offset :]
        return bytes(out)


# ---------------------------------------------------------------- the filter

# (host or None, destination address, destination port, interface index)
# -> "split" | "pass" | "watch"
Choose = Callable[[str | None, str, int, int], str]


@dataclass
class _Conn:
    keys: InitialKeys
    seen: float
    stream: CryptoStream | None  # None once decided
    drop: bool | None = None  # None: undecided


@dataclass
class QuicStats:
    packets: int = 0  # UDP packets looked at
    dropped: int = 0
    undecided: int = 0  # accepted without a decision (not decryptable, name incomplete, ...)
    split_conns: int = 0  # connections whose name would be split: their Initials dropped
    pass_conns: int = 0
    evicted: int = 0  # connections forgotten because the table was full


class QuicFilter:
    """Decides, packet by packet, which QUIC Initials to drop (see the module doc).

    `choose` is :meth:`govpass._core.Engine.choose`, so profiles reloaded into
    the engine apply here at once. State: at most `max_conns` connections, each
    forgotten `ttl` seconds after its last packet; at most `max_crypto` bytes
    of CRYPTO stream per connection (a larger hello is not decided: accepted).
    """

    def __init__(
        self,
        choose: Choose,
        ttl: float = 5.0,
        max_conns: int = 1024,
        max_crypto: int = 16384,
    ) -> None:
        if ttl <= 0 or max_conns < 1 or max_crypto < 1:
            raise ValueError("ttl, max_conns and max_crypto must be positive")
        self.choose = choose
        self.ttl = ttl
        self.max_conns = max_conns
        self.max_crypto = max_crypto
        self.counters = QuicStats()
        self._conns: OrderedDict[Hashable, _Conn] = OrderedDict()

    def __len__(self) -> int:
        return len(self._conns)

    def should_drop(self, packet: bytes, now: float, iface: int = 0) -> bool:
        """Verdict for one IP packet carrying a UDP datagram (True: drop it)."""
        parsed = udp_datagram(packet)
        if parsed is None:
            self.counters.packets += 1
            self.counters.undecided += 1
            return False
        flow, dst, dport, datagram = parsed
        return self.should_drop_datagram(datagram, flow, dst, dport, now, iface)

    def should_drop_datagram(
        self,
        datagram: bytes,
        flow: Hashable,
        dst: str,
        dport: int,
        now: float,
        iface: int = 0,
    ) -> bool:
        """Verdict for one UDP payload; `flow` names its 4-tuple (any hashable)."""
        c = self.counters
        c.packets += 1
        self._expire(now)
        try:
            header = parse_long_header(datagram)
        except Malformed:
            c.undecided += 1
            return False
        key = (flow, header.version, header.dcid)
        conn = self._conns.get(key)
        if conn is not None:
            conn.seen = now
            self._conns.move_to_end(key)
            if conn.drop is not None:  # decided: retransmissions and 0-RTT follow
                return self._verdict(conn.drop)
        if header.kind != INITIAL:  # unknown version, or 0-RTT of an undecided connection
            c.undecided += 1
            return False
        keys = conn.keys if conn else InitialKeys.derive(header.dcid, VERSIONS[header.version])
        frames = self._frames(datagram, header, keys)
        if frames is None:
            c.undecided += 1
            return False
        if conn is None:
            conn = self._insert(key, _Conn(keys, now, CryptoStream(self.max_crypto)))
        assert conn.stream is not None
        if not all(conn.stream.add(offset, data) for offset, data in frames):
            return self._decide(conn, False)  # too large to follow: fail open
        prefix = conn.stream.prefix()
        status, host = client_hello_sni(prefix) if prefix else ("needmore", None)
        if status == "needmore":
            c.undecided += 1
            return False
        if status == "malformed":
            return self._decide(conn, False)
        return self._decide(conn, self.choose(host, dst, dport, iface) == "split")

    def stats(self) -> dict[str, int]:
        c = self.counters
        return {
            "quic_packets": c.packets,
            "quic_dropped": c.dropped,
            "quic_undecided": c.undecided,
            "quic_split_conns": c.split_conns,
            "quic_pass_conns": c.pass_conns,
            "quic_evicted": c.evicted,
            "quic_conns_now": len(self._conns),
        }

    def _frames(
        self, datagram: bytes, header: LongHeader, keys: InitialKeys
    ) -> list[tuple[int, bytes]] | None:
        """CRYPTO frames of the Initial at the start of the datagram and of the
        Initials of the same connection coalesced after it; None when the first
        does not decrypt."""
        frames: list[tuple[int, bytes]] = []
        first = True
        while True:
            try:
                frames += crypto_frames(unprotect_initial(datagram, header, keys))
            except Malformed:
                if first:
                    return None
                break
            first = False
            if header.end >= len(datagram):
                break
            try:
                nxt = parse_long_header(datagram, header.end)
            except Malformed:
                break  # e.g. padding after the packet
            if nxt.kind != INITIAL or (nxt.version, nxt.dcid) != (header.version, header.dcid):
                break
            header = nxt
        return frames

    def _insert(self, key: Hashable, conn: _Conn) -> _Conn:
        while len(self._conns) >= self.max_conns:
            self._conns.popitem(last=False)
            self.counters.evicted += 1
        self._conns[key] = conn
        return conn

    def _expire(self, now: float) -> None:
        conns = self._conns
        while conns:
            oldest = next(iter(conns.values()))
            if now - oldest.seen <= self.ttl:
                break
            conns.popitem(last=False)

    def _decide(self, conn: _Conn, drop: bool) -> bool:
        conn.drop = drop
        conn.stream = None
        if drop:
            self.counters.split_conns += 1
        else:
            self.counters.pass_conns += 1
        return self._verdict(drop)

    def _verdict(self, drop: bool) -> bool:
        if drop:
            self.counters.dropped += 1
        return drop


def udp_datagram(packet: bytes) -> tuple[Hashable, str, int, bytes] | None:
    """(flow key, destination address, destination port, UDP payload) of an
    IPv4/IPv6 packet carrying a whole UDP datagram; None for anything else
    (IPv4 fragments, IPv6 extension headers, other protocols)."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or len(packet) < ihl + 8 or packet[9] != socket.IPPROTO_UDP:
            return None
        if struct.unpack_from("!H", packet, 6)[0] & 0x3FFF:  # MF or a fragment offset
            return None
        src, dst, udp, family = packet[12:16], packet[16:20], ihl, socket.AF_INET
    elif version == 6:
        if len(packet) < 48 or packet[6] != socket.IPPROTO_UDP:
            return None
        src, dst, udp, family = packet[8:24], packet[24:40], 40, socket.AF_INET6
    else:
        return None
    sport, dport, length = struct.unpack_from("!HHH", packet, udp)
    end = udp + length if length >= 8 else len(packet)
    payload = packet[udp + 8 : end]
    return (src, dst, sport, dport), socket.inet_ntop(family, dst), dport, payload
