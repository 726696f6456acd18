"""govpass.quic (--block-quic listed): QUIC Initial decryption, CRYPTO reassembly,
the SNI, the verdict, and the bounds on state.

Real bytes: the client Initials of RFC 9001 and RFC 9369 (Appendix A.2, typed from
the RFC text into tests/fixtures/quic/), Initials built in memory by aioquic (one
packet, and a hello spread over two packets with the host name across the packet
boundary), and a Chromium-shaped 2 KB hello (tests/fixtures/hellos) cut into
shuffled CRYPTO frames the way Chrome sends them, sealed by a helper that is itself
checked against the RFC bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import socket
import struct
from pathlib import Path

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.tls import CipherSuite
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from govpass import quic
from govpass._core import (
    Engine,
    HostList,
    IpSet,
    Profile,
    QuicHeader,
    client_hello_sni,
    quic_initial_sni,
    quic_long_header,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HELLOS = FIXTURES / "hellos"
RFC_DCID = bytes.fromhex("8394c8f03e515708")
# RFC 9001 A.2 (and RFC 9369 A.2): the unprotected payload before its PADDING.
RFC_CRYPTO_FRAME = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff"
)
BLOCKED, ALLOWED = "blocked.example", "allowed.example"
DST = "198.51.100.7"


def rfc_packet(name: str) -> bytes:
    lines = (FIXTURES / "quic" / name).read_text().splitlines()
    return bytes.fromhex("".join(ln for ln in lines if not ln.startswith("#")).replace(" ", ""))


RFC_V1 = rfc_packet("rfc9001_a2_client_initial.hex")
RFC_V2 = rfc_packet("rfc9369_a2_client_initial.hex")


def listed_engine(*names: str) -> Engine:
    """An engine with the --hosts shortcut's profiles: listed names split, the rest pass."""
    engine = Engine()
    engine.set_profiles(
        [Profile("listed", hosts=[HostList(list(names))]), Profile("other", action="pass")]
    )
    return engine


def new_filter(*names: str, **kwargs: float) -> quic.QuicFilter:
    return quic.QuicFilter(listed_engine(*names).choose, **kwargs)  # type: ignore[arg-type]


class Recorder:
    """A `choose` that records its calls and answers from a table."""

    def __init__(self, answers: dict[str | None, str]) -> None:
        self.answers = answers
        self.calls: list[tuple[str | None, str, int, int]] = []

    def __call__(self, host: str | None, dst: str, dport: int, iface: int) -> str:
        self.calls.append((host, dst, dport, iface))
        return self.answers.get(host, "pass")


# ---------------------------------------------------------------- builders

# RFC 9001 §5.2 / RFC 9369 §3.3.1: salt, label prefix, type bits of an Initial.
SEAL_VERSIONS = {
    quic.QUIC_V1: (bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"), b"quic ", 0),
    quic.QUIC_V2: (bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"), b"quicv2 ", 1),
}


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    return hmac.new(secret, info + b"\x01", hashlib.sha256).digest()[:length]


def initial_keys(dcid: bytes, version: int) -> tuple[bytes, bytes, bytes]:
    """(key, iv, hp) of a client's Initials, for the sealing helper below (the
    filter's own derivation is the Rust core's, checked there against RFC A.1)."""
    salt, prefix, _bits = SEAL_VERSIONS[version]
    client = _expand_label(hmac.new(salt, dcid, hashlib.sha256).digest(), b"client in", 32)
    key, iv, hp = (
        _expand_label(client, prefix + name, n)
        for name, n in ((b"key", 16), (b"iv", 12), (b"hp", 16))
    )
    return key, iv, hp


def header_of(datagram: bytes) -> QuicHeader:
    header = quic_long_header(datagram)
    assert isinstance(header, QuicHeader), header
    return header


def frames_of(datagram: bytes) -> list[tuple[int, bytes]]:
    frames = header_of(datagram).initial_frames()
    assert isinstance(frames, list), frames
    return frames


def aioquic_flight(
    name: str, suites: int = 0, version: int = quic.QUIC_V1, alpn: tuple[str, ...] = ("h3",)
) -> list[bytes]:
    """The datagrams of a real client's first flight, from aioquic (no network).
    `suites`: that many cipher suites offered, which pushes the host name back."""
    cfg = QuicConfiguration(is_client=True, server_name=name, alpn_protocols=list(alpn))
    cfg.supported_versions = [version]
    if suites:
        cfg.cipher_suites = [CipherSuite.AES_128_GCM_SHA256] * suites
    conn = QuicConnection(configuration=cfg)
    conn.connect((DST, 443), now=0.0)
    return [data for data, _addr in conn.datagrams_to_send(now=0.0)]


def seal_initial(
    dcid: bytes,
    payload: bytes,
    pn: int = 0,
    version: int = quic.QUIC_V1,
    pn_len: int = 4,
    scid: bytes = b"",
    token: bytes = b"",
) -> bytes:
    """Protects an Initial packet as a client would (RFC 9001 §5); checked against
    the RFC's own bytes in test_seal_reproduces_the_rfc_packets."""
    _salt, _prefix, type_bits = SEAL_VERSIONS[version]
    key, iv, hp = initial_keys(dcid, version)
    length = pn_len + len(payload) + 16
    header = (
        bytes([0xC0 | type_bits << 4 | (pn_len - 1)])
        + struct.pack("!I", version)
        + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
        + bytes([len(token)]) + token  # token length < 64: a 1-byte varint
        + struct.pack("!H", 0x4000 | length)
        + pn.to_bytes(pn_len, "big")
    )  # fmt: skip
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(key).encrypt(nonce, payload, header)
    sample = sealed[4 - pn_len : 20 - pn_len]
    mask = Cipher(algorithms.AES(hp), modes.ECB()).encryptor().update(sample)
    pn_at = len(header) - pn_len
    out = bytearray(header + sealed)
    out[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        out[pn_at + i] ^= mask[1 + i]
    return bytes(out)


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def varint(n: int) -> bytes:
    if n < 0x40:
        return bytes([n])
    if n < 0x4000:
        return struct.pack("!H", 0x4000 | n)
    return struct.pack("!I", 0x80000000 | n)


def padded(frames: bytes, size: int = 1162) -> bytes:
    return frames + bytes(max(0, size - len(frames)))


def handshake_of(fixture: str) -> bytes:
    """A ClientHello fixture without its 5-byte TLS record header (as QUIC carries it)."""
    return (HELLOS / fixture).read_bytes()[5:]


def manifest() -> list[dict[str, object]]:
    data: list[dict[str, object]] = json.loads((HELLOS / "manifest.json").read_text())
    return data


def chrome_like_flight(dcid: bytes, hello: bytes, seed: int = 7) -> list[bytes]:
    """`hello` cut into CRYPTO frames of random sizes, shuffled over two Initial
    packets the way Chrome sends a post-quantum hello, each padded to 1200 bytes."""
    rng = random.Random(seed)
    pieces, pos = [], 0
    while pos < len(hello):
        size = rng.randint(40, 400)
        pieces.append((pos, hello[pos : pos + size]))
        pos += size
    rng.shuffle(pieces)
    packets: list[list[tuple[int, bytes]]] = [[], []]
    budget = 1100
    for offset, data in pieces:
        first = sum(len(d) + 8 for _, d in packets[0])
        packets[0 if first + len(data) + 8 <= budget else 1].append((offset, data))
    return [
        seal_initial(dcid, padded(b"".join(crypto_frame(o, d) for o, d in frames)), pn=i)
        for i, frames in enumerate(packets)
    ]


def ip_packet(datagram: bytes, family: int = 4, dst: str = DST, sport: int = 50000) -> bytes:
    udp = struct.pack("!HHHH", sport, 443, 8 + len(datagram), 0) + datagram
    if family == 4:
        head = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0x4000, 64, 17, 0,
            socket.inet_aton("192.0.2.2"), socket.inet_aton(dst),
        )  # fmt: skip
        return head + udp
    src = socket.inet_pton(socket.AF_INET6, "2001:db8::2")
    return (
        struct.pack("!IHBB", 0x60000000, len(udp), 17, 64)
        + src
        + socket.inet_pton(socket.AF_INET6, dst)
        + udp
    )


# ---------------------------------------------------------------- RFC vectors


@pytest.mark.parametrize(
    ("packet", "version", "key", "iv", "hp"),
    [
        (RFC_V1, quic.QUIC_V1, "1f369613dd76d5467730efcbe3b1a22d", "fa044b2f42a3fd3b46fb255c",
         "9f50449e04a0e810283a1e9933adedd2"),
        (RFC_V2, quic.QUIC_V2, "8b1a0bc121284290a29e0971b5cd045d", "91f73e2351d8fa91660e909f",
         "45b95e15235d6f45a6b19cbcb0294ba9"),
    ],
    ids=["v1-rfc9001", "v2-rfc9369"],
)  # fmt: skip
def test_rfc_client_initial_decrypts_to_example_com(
    packet: bytes, version: int, key: str, iv: str, hp: str
) -> None:
    assert len(packet) == 1200
    header = header_of(packet)
    assert (header.version, header.dcid, header.kind) == (version, RFC_DCID, "initial")
    # RFC A.1; the core checks its own derivation and the plaintext against the RFC
    assert tuple(k.hex() for k in initial_keys(RFC_DCID, version)) == (key, iv, hp)
    frames = frames_of(packet)
    assert frames == [(0, RFC_CRYPTO_FRAME[4:])]  # the frame's offset and length: 1 + 1 + 2 bytes
    assert client_hello_sni(frames[0][1]) == ("found", "example.com")
    assert quic_initial_sni(packet) == ("found", "example.com")

    choose = Recorder({"example.com": "split"})
    f = quic.QuicFilter(choose)
    assert f.should_drop(ip_packet(packet), now=1.0, iface=3) is True
    assert choose.calls == [("example.com", DST, 443, 3)]
    assert f.stats()["quic_dropped"] == 1 and f.stats()["quic_split_conns"] == 1


def test_rfc_initial_of_a_name_not_listed_passes() -> None:
    f = new_filter("blocked.example")
    for packet in (RFC_V1, RFC_V2):
        assert f.should_drop(ip_packet(packet), 0.0) is False
    assert f.stats()["quic_pass_conns"] == 2 and f.stats()["quic_dropped"] == 0


def test_seal_reproduces_the_rfc_packets() -> None:
    """The test helper that builds Initials gives the RFC's bytes exactly."""
    for packet, version in ((RFC_V1, quic.QUIC_V1), (RFC_V2, quic.QUIC_V2)):
        assert seal_initial(RFC_DCID, padded(RFC_CRYPTO_FRAME), 2, version) == packet


# ---------------------------------------------------------------- real clients: aioquic


def test_aioquic_single_packet_hello() -> None:
    f = new_filter(BLOCKED)
    [blocked] = aioquic_flight(BLOCKED)
    [allowed] = aioquic_flight(ALLOWED)
    assert f.should_drop_datagram(blocked, "a", DST, 443, 0.0) is True
    assert f.should_drop_datagram(allowed, "b", DST, 443, 0.0) is False
    # decided: the retransmission of the same Initial gets the same verdict, no decryption
    assert f.should_drop_datagram(blocked, "a", DST, 443, 0.5) is True
    assert f.should_drop_datagram(allowed, "b", DST, 443, 0.5) is False
    s = f.stats()
    assert (s["quic_split_conns"], s["quic_pass_conns"], s["quic_dropped"]) == (1, 1, 2)


def test_aioquic_subdomain_and_case() -> None:
    f = new_filter(BLOCKED)
    [www] = aioquic_flight("WWW.Blocked.Example")
    assert f.should_drop_datagram(www, "a", DST, 443, 0.0) is True


@pytest.mark.parametrize("version", [quic.QUIC_V1, quic.QUIC_V2], ids=["v1", "v2"])
def test_aioquic_versions(version: int) -> None:
    [blocked] = aioquic_flight(BLOCKED, version=version)
    assert header_of(blocked).version == version
    assert new_filter(BLOCKED).should_drop_datagram(blocked, "a", DST, 443, 0.0) is True


@pytest.mark.parametrize("suites", [385, 600], ids=["name-across-packets", "name-in-packet-2"])
def test_aioquic_hello_over_two_packets(suites: int) -> None:
    """A long hello: the first packet alone cannot tell (accepted, state kept);
    the packet completing the name is dropped, and so is every retransmission."""
    first, second = aioquic_flight(BLOCKED, suites=suites)
    prefix = _stream_of(first)
    name_at = (prefix + _stream_of(second, len(prefix))).find(BLOCKED.encode())
    if suites == 385:
        assert name_at < len(prefix) < name_at + len(BLOCKED)  # the name straddles
    else:
        assert name_at >= len(prefix)
    f = new_filter(BLOCKED)
    assert f.should_drop_datagram(first, "a", DST, 443, 0.0) is False
    assert len(f) == 1 and f.stats()["quic_undecided"] == 1
    assert f.should_drop_datagram(second, "a", DST, 443, 0.01) is True
    assert f.should_drop_datagram(first, "a", DST, 443, 0.3) is True
    assert f.should_drop_datagram(second, "a", DST, 443, 0.3) is True

    g = new_filter(BLOCKED)
    assert [g.should_drop_datagram(d, "b", DST, 443, 0.0) for d in (second, first)] == [
        False,
        True,
    ]  # reordered: the second packet first

    h = new_filter(BLOCKED)
    a1, a2 = aioquic_flight(ALLOWED, suites=suites)
    assert [h.should_drop_datagram(d, "c", DST, 443, 0.0) for d in (a1, a2, a1)] == [False] * 3
    assert h.stats()["quic_pass_conns"] == 1


def _stream_of(datagram: bytes, expect_from: int = 0) -> bytes:
    [(offset, data)] = frames_of(datagram)
    assert offset == expect_from
    return data


def test_aioquic_long_alpn_list() -> None:
    alpn = tuple(f"proto-{i:03d}-with-a-long-name" for i in range(60))
    flight = aioquic_flight(BLOCKED, alpn=alpn)
    assert len(flight) == 2
    f = new_filter(BLOCKED)
    # the name comes before ALPN in aioquic's hello: decided on the first packet
    assert f.should_drop_datagram(flight[0], "a", DST, 443, 0.0) is True


# ---------------------------------------------------------------- Chrome-shaped flights


@pytest.mark.parametrize("seed", range(8))
def test_shuffled_crypto_frames_of_a_2kb_hello(seed: int) -> None:
    hello = handshake_of("chromium_sni_late.bin")  # X25519MLKEM768 share, name at 1764
    dcid = random.Random(seed).randbytes(8)
    flight = chrome_like_flight(dcid, hello, seed)
    f = new_filter(BLOCKED)
    verdicts = [f.should_drop_datagram(d, "a", DST, 443, 0.0) for d in flight]
    assert verdicts == [False, True]  # the name is complete only with both packets
    g = new_filter(BLOCKED)
    assert [g.should_drop_datagram(d, "a", DST, 443, 0.0) for d in reversed(flight)] == [
        False,
        True,
    ]


def test_coalesced_initials_in_one_datagram() -> None:
    hello = handshake_of("chromium_sni_late.bin")
    dcid = bytes(range(8))
    one = seal_initial(dcid, crypto_frame(0, hello[:1000]), pn=0)
    two = seal_initial(dcid, crypto_frame(1000, hello[1000:]) + bytes(20), pn=1)
    assert new_filter(BLOCKED).should_drop_datagram(one + two, "a", DST, 443, 0.0) is True
    other = seal_initial(b"\x01" * 8, crypto_frame(1000, hello[1000:]), pn=1)
    # a packet of another connection coalesced after it is not read into this one
    assert new_filter(BLOCKED).should_drop_datagram(one + other, "a", DST, 443, 0.0) is False


def test_zero_rtt_of_a_dropped_connection_is_dropped() -> None:
    [blocked] = aioquic_flight(BLOCKED)
    dcid = header_of(blocked).dcid
    zero_rtt = bytes([0xD3]) + struct.pack("!I", 1) + bytes([8]) + dcid + b"\x00"
    zero_rtt += struct.pack("!H", 0x4000 | 60) + bytes(60)
    f = new_filter(BLOCKED)
    assert f.should_drop_datagram(zero_rtt, "a", DST, 443, 0.0) is False  # nothing known yet
    assert f.should_drop_datagram(blocked, "a", DST, 443, 0.0) is True
    assert f.should_drop_datagram(zero_rtt, "a", DST, 443, 0.0) is True
    assert f.should_drop_datagram(zero_rtt, "other-flow", DST, 443, 0.0) is False


# ---------------------------------------------------------------- undecidable: accepted


def _udp_probe_initial(first: int, size: int) -> bytes:
    """The fake Initial tests/e2e/udp_probe.py sends: version 1, everything zero."""
    return bytes([first]) + b"\x00\x00\x00\x01" + bytes(size - 5)


UNDECIDABLE = {
    "empty": b"",
    "one byte": b"\xc3",
    "short header": bytes([0x43]) + bytes(60),
    "udp_probe v1": _udp_probe_initial(0xC3, 1200),
    "udp_probe v2 type": _udp_probe_initial(0xD1, 1200),
    "unknown version": bytes([0xC3]) + bytes.fromhex("deadbeef") + RFC_V1[5:],
    "version negotiation": bytes([0xC0]) + bytes(4) + RFC_V1[5:40],
    "draft-29": bytes([0xC3]) + bytes.fromhex("ff00001d") + RFC_V1[5:],
    "bad tag": RFC_V1[:-1] + bytes([RFC_V1[-1] ^ 1]),
    "truncated": RFC_V1[:600],
    "length past the end": RFC_V1[:16] + b"\x7f\xff" + RFC_V1[18:],
    "dcid too long": bytes([0xC3]) + struct.pack("!I", 1) + bytes([21]) + bytes(1200),
    "random": random.Random(1).randbytes(1200),
    "random long header": bytes([0xC3]) + random.Random(2).randbytes(1199),
    "retry": bytes([0xF0]) + struct.pack("!I", 1) + b"\x08" + RFC_DCID + b"\x00" + bytes(40),
    "handshake": bytes([0xE3]) + RFC_V1[1:],
}


@pytest.mark.parametrize("datagram", UNDECIDABLE.values(), ids=UNDECIDABLE.keys())
def test_undecidable_datagrams_are_accepted_without_state(datagram: bytes) -> None:
    choose = Recorder({})
    f = quic.QuicFilter(choose)
    assert f.should_drop_datagram(datagram, "a", DST, 443, 0.0) is False
    assert len(f) == 0 and choose.calls == []
    assert f.stats()["quic_undecided"] == 1


def test_not_quic_initials_at_the_ip_level() -> None:
    f = new_filter(BLOCKED)
    [blocked] = aioquic_flight(BLOCKED)
    v4 = ip_packet(blocked)
    tcp = v4[:9] + b"\x06" + v4[10:]
    fragment = v4[:6] + b"\x20\x00" + v4[8:]  # more fragments
    v6_with_ext = bytearray(ip_packet(blocked, 6, "2001:db8::7"))
    v6_with_ext[6] = 0  # hop-by-hop options
    for packet in (b"", b"\x45", tcp, fragment, bytes(v6_with_ext), b"\x10" + bytes(60)):
        assert f.should_drop(packet, 0.0) is False
    assert len(f) == 0
    assert f.should_drop(v4, 0.0) is True


def test_ipv6_packet_and_destination() -> None:
    choose = Recorder({BLOCKED: "split"})
    f = quic.QuicFilter(choose)
    [blocked] = aioquic_flight(BLOCKED)
    assert f.should_drop(ip_packet(blocked, 6, "2001:db8::7"), 0.0, iface=5) is True
    assert choose.calls == [(BLOCKED, "2001:db8::7", 443, 5)]


def test_malformed_hello_is_decided_pass() -> None:
    not_a_hello = b"\x02\x00\x00\x10" + bytes(16)  # a ServerHello type
    packet = seal_initial(b"\x05" * 8, padded(crypto_frame(0, not_a_hello)))
    f = new_filter(BLOCKED)
    assert f.should_drop_datagram(packet, "a", DST, 443, 0.0) is False
    assert f.stats()["quic_pass_conns"] == 1


def test_hello_without_sni_asks_the_profiles_without_a_name() -> None:
    choose = Recorder({None: "split"})
    hello = handshake_of("openssl_no_sni.bin")
    packet = seal_initial(b"\x06" * 8, padded(crypto_frame(0, hello)))
    assert quic.QuicFilter(choose).should_drop_datagram(packet, "a", DST, 443, 0.0) is True
    assert choose.calls == [(None, DST, 443, 0)]
    # with the --hosts profiles a flow without a name passes, as over TCP
    assert new_filter(BLOCKED).should_drop_datagram(packet, "a", DST, 443, 0.0) is False


# ---------------------------------------------------------------- bounds


def test_connections_are_bounded_and_the_oldest_evicted() -> None:
    f = new_filter(BLOCKED, max_conns=4)
    firsts = [aioquic_flight(BLOCKED, suites=600)[0] for _ in range(10)]
    for i, first in enumerate(firsts):
        assert f.should_drop_datagram(first, "a", DST, 443, float(i) / 100) is False
        assert len(f) <= 4
    assert f.stats()["quic_evicted"] == 6


def test_state_expires_after_ttl_of_silence() -> None:
    f = new_filter(BLOCKED, ttl=2.0)
    first, second = aioquic_flight(BLOCKED, suites=600)
    assert f.should_drop_datagram(first, "a", DST, 443, 0.0) is False
    assert f.should_drop_datagram(first, "a", DST, 443, 1.5) is False  # seen again: kept
    assert len(f) == 1
    [other] = aioquic_flight(ALLOWED)
    f.should_drop_datagram(other, "b", DST, 443, 3.6)  # > ttl after the last packet
    assert len(f) == 1  # only `other`'s (decided) state is left
    # the second half alone no longer completes the name: accepted, undecided
    assert f.should_drop_datagram(second, "a", DST, 443, 3.7) is False


def test_decided_drops_stay_while_retransmissions_keep_coming() -> None:
    f = new_filter(BLOCKED, ttl=2.0)
    [blocked] = aioquic_flight(BLOCKED)
    assert all(f.should_drop_datagram(blocked, "a", DST, 443, t * 1.5) for t in range(10))
    assert f.stats()["quic_split_conns"] == 1


def test_crypto_stream_limit_fails_open() -> None:
    f = new_filter(BLOCKED, max_crypto=1000)
    first, second = aioquic_flight(BLOCKED, suites=600)
    assert f.should_drop_datagram(first, "a", DST, 443, 0.0) is False
    assert f.stats()["quic_pass_conns"] == 1  # more than 1000 bytes: given up, passes
    assert f.should_drop_datagram(second, "a", DST, 443, 0.0) is False


def test_crypto_stream_reassembly() -> None:
    s = quic.CryptoStream(limit=100, max_pieces=3)
    assert s.add(10, b"k" * 10) and s.prefix() == b""
    assert s.add(0, b"a" * 12) and s.prefix() == b"a" * 12 + b"k" * 8
    assert s.add(0, b"a" * 5)  # a shorter retransmission changes nothing
    assert s.prefix() == b"a" * 12 + b"k" * 8
    assert not s.add(95, b"x" * 6)  # past the limit
    assert s.add(50, b"z")
    assert not s.add(60, b"y")  # a fourth piece
    assert s.add(20, b"")  # empty frames are ignored


def test_filter_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError):
        new_filter(BLOCKED, max_conns=0)


# ---------------------------------------------------------------- frames and varints


def test_frames_an_initial_may_hold() -> None:
    """The frame walk itself (and the RFC 9000 varint examples) is tested in the
    core (rust/govpass-core/src/quic/tests.rs); here: through a sealed packet."""
    plain = (
        b"\x01"  # PING
        + b"\x02\x05\x00\x01\x00\x01\x02"  # ACK: 1 extra range
        + b"\x03\x05\x00\x00\x00\x01\x02\x03"  # ACK with ECN counts
        + crypto_frame(7, b"abc")
        + b"\x1c\x0a\x06\x02hi"  # CONNECTION_CLOSE
        + bytes(30)  # PADDING
        + crypto_frame(0, b"1234567")
    )
    assert frames_of(seal_initial(b"\x09" * 8, plain)) == [(7, b"abc"), (0, b"1234567")]
    for bad in (b"\x08\x00", b"\x06\x00\x05ab", b"\x02\x05\x00\x7f", b"\x1c\x01\x02\x09x"):
        frames = header_of(seal_initial(b"\x09" * 8, bad)).initial_frames()
        assert isinstance(frames, str), bad


def test_datagram_reading_answers_reasons() -> None:
    assert quic_long_header(b"") == "not a long-header packet"
    assert quic_long_header(bytes([0x43]) + bytes(60)) == "not a long-header packet"
    assert header_of(UNDECIDABLE["unknown version"]).kind is None
    assert header_of(UNDECIDABLE["unknown version"]).initial_frames() == "unknown version"
    assert header_of(UNDECIDABLE["handshake"]).kind == "handshake"
    assert header_of(UNDECIDABLE["bad tag"]).initial_frames() == (
        "does not decrypt with the Initial keys"
    )
    assert quic_initial_sni(UNDECIDABLE["udp_probe v1"]) == (
        "error",
        "packet too short for the header protection sample",
    )
    [blocked] = aioquic_flight(BLOCKED)
    assert quic_initial_sni(blocked) == ("found", BLOCKED)


# ---------------------------------------------------------------- the Rust parts


@pytest.mark.parametrize("entry", manifest(), ids=lambda e: str(e["file"]))
def test_client_hello_sni_on_every_fixture(entry: dict[str, object]) -> None:
    hello = handshake_of(str(entry["file"]))
    if entry["sni"] is None:
        assert client_hello_sni(hello) == ("absent", None)
    else:
        assert client_hello_sni(hello) == ("found", entry["sni"])


def test_client_hello_sni_on_prefixes() -> None:
    """Every prefix answers needmore until the name is complete, then the name."""
    hello = handshake_of("chromium_sni_late.bin")
    end = hello.find(BLOCKED.encode()) + len(BLOCKED)
    for n in range(len(hello) + 1):
        expected = ("found", BLOCKED) if n >= end else ("needmore", None)
        assert client_hello_sni(hello[:n]) == expected, n
    assert client_hello_sni(hello + b"trailing") == ("found", BLOCKED)


def test_client_hello_sni_rejects_what_is_not_a_hello() -> None:
    hello = handshake_of("openssl_default.bin")
    assert client_hello_sni(b"\x02" + hello[1:]) == ("malformed", None)
    assert client_hello_sni(b"\x16\x03\x01\x02\x00\x01") == ("malformed", None)  # a record
    assert client_hello_sni(b"\x01\x00\x48\x01") == ("malformed", None)  # > one record
    assert client_hello_sni(b"\x01\x00\x00\x02\x03\x03") == ("malformed", None)
    assert client_hello_sni(b"\x01\x00") == ("needmore", None)
    assert client_hello_sni(b"") == ("needmore", None)


def test_engine_choose_follows_the_profiles() -> None:
    engine = listed_engine(BLOCKED)
    assert engine.choose(BLOCKED, DST, 443) == "split"
    assert engine.choose("x." + BLOCKED, "2001:db8::1", 443, 4) == "split"
    assert engine.choose(ALLOWED, DST, 443) == "pass"
    assert engine.choose(None, DST, 443) == "pass"
    assert Engine().choose(None, DST, 443) == "split"  # default: everything is split
    nets = Engine()
    nets.set_profiles([Profile("nets", ips=[IpSet(["198.51.100.0/24"])], ports=[443])])
    assert nets.choose(None, DST, 443) == "split"
    assert nets.choose(None, DST, 8443) == "pass"
    assert nets.choose(None, "203.0.113.1", 443) == "pass"
    auto = Engine()
    auto.set_profiles([Profile("auto", auto=True, hosts=[HostList([])])])
    assert auto.choose(ALLOWED, DST, 443) == "watch"
    with pytest.raises(ValueError, match="not an IP address"):
        engine.choose(BLOCKED, "not-an-address", 443)
