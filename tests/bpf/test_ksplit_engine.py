"""The kernel split against the engine: for the same whole one-packet ClientHello
and the same settings, the segments the kernel split program makes (run through
BPF_PROG_TEST_RUN, as in test_ksplit.py) are the segments ``Engine.process``
sends, byte for byte but for the checksums' spelling (0x0000 and 0xFFFF are the
same one's complement sum; both sides' checksums are checked as full sums). A
record the engine cuts into more than two segments (its headers over 40 bytes
take their size off max-seg-payload) goes on untouched in the kernel: the
pre-filter leaves it to the engine (tests/bpf/test_prefilter.py).

Packets: the ClientHello fixtures that fit one Ethernet packet, and random
records (hypothesis) of every size the settings let the kernel split take, with
and without TCP and IP options, any sequence number, with and without PSH. A
record that does not end in its packet goes on untouched in the kernel and is
held by the engine (it waits for the rest). The settings come from one Config
for both sides: ``kernel_split.params_for`` for the program, ``engine_config``
for the engine."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import ksplit_probe
import pytest
from frames import DPORT, FAMILIES, SPORT, checksums_ok, frame, ip_layer, parse, without_checksums
from govpass import SEND, Engine
from govpass.config import Config
from govpass.kernel_split import config_reason, params_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IPOption

HELLOS = Path(__file__).resolve().parent.parent / "fixtures" / "hellos"
MANIFEST: list[dict[str, Any]] = json.loads((HELLOS / "manifest.json").read_text())
# Chromium's 2 KB hellos do not fit one Ethernet packet: not the kernel split's.
FIXTURES = {
    e["file"]: (HELLOS / e["file"]).read_bytes() for e in MANIFEST if e["record_len"] + 5 <= 1500
}
MARK = 0x40000000
TS_OPTS: list[tuple[str, object]] = [("NOP", None), ("NOP", None), ("Timestamp", (7, 8))]
TCP_OPTS_40: list[tuple[str, object]] = [("NOP", None)] * 30 + [("Timestamp", (7, 8))]
IP_OPTIONS = [IPOption(b"\x01\x01\x01\x01"), IPOption(b"\x01" * 40)]


@pytest.fixture(scope="module", autouse=True)
def _root() -> None:
    lacking = ksplit_probe.missing_needs()
    if lacking:
        pytest.fail(lacking, pytrace=False)


def settings_for(chunk: int, max_seg_payload: int) -> Config:
    config = replace(Config(), split_chunk=chunk, max_seg_payload=max_seg_payload, mark=MARK)
    assert config_reason(config) is None, config_reason(config)
    return config


def program_params(config: Config) -> dict[str, Any]:
    p = params_for(config, 14)
    return {
        "chunk": p.chunk,
        "max_payload": p.max_payload,
        "max_seg_payload": p.max_seg_payload,
        "ports": list(p.ports),
        "mark": p.mark,
        "local": p.local,
        "l2": p.l2,
    }


def engine_sends(config: Config, packet: bytes) -> list[bytes]:
    """The IP packets a fresh engine sends for ``packet`` (an IP packet)."""
    actions = Engine(config.engine_config()).process(packet, 0.0, "h") or []
    return [a.packet for a in actions if a.kind == SEND]


def compare(config: Config, frames: list[bytes]) -> None:
    """Runs ``frames`` through the program for ``config`` and checks each against
    the engine: split the same way, or left alone by both (the engine holding or
    passing the packet, the program passing it on untouched)."""
    runs = ksplit_probe.run_isolated(program_params(config), [{"frame": f.hex()} for f in frames])
    for original, run in zip(frames, runs, strict=True):
        sends = engine_sends(config, original[14:])
        clones = [bytes.fromhex(c) for c in run["clones"]]
        out = bytes.fromhex(run["out"])
        assert run["retval"] == -1  # TCX_NEXT
        if len(sends) != 2:  # held (not whole), or more segments than the kernel makes
            assert clones == [] and out == original, f"the engine made {len(sends)} segments"
            continue
        assert len(clones) == 1, "the engine split what the kernel did not"
        kernel = [parse(clones[0]), parse(out)]
        engine = [parse(original[:14] + s) for s in sends]
        for k, e in zip(kernel, engine, strict=True):
            assert without_checksums(k) == without_checksums(e)
            assert checksums_ok(k) == (True, True), "kernel segment: (IP, TCP) checksum"
            assert checksums_ok(e) == (True, True), "engine segment: (IP, TCP) checksum"


# ------------------------------------------------------------- the fixtures


@pytest.mark.parametrize(
    ("chunk", "max_seg_payload"), [(1, 1460), (5, 1460), (6, 1460), (40, 1000), (64, 1460)]
)
def test_fixture_hellos_are_split_as_the_engine_splits_them(
    chunk: int, max_seg_payload: int
) -> None:
    config = settings_for(chunk, max_seg_payload)
    frames = []
    for family in FAMILIES:
        for rec in FIXTURES.values():
            frames.append(frame(family, rec))
            frames.append(frame(family, rec, seq=2**32 - chunk, tcp_options=TS_OPTS))
            frames.append(frame(family, rec, flags="A", tcp_options=TCP_OPTS_40))
        rec = FIXTURES["openssl_default.bin"]
        frames.append(frame("ipv4", rec, ip=ip_layer("ipv4", options=[IP_OPTIONS[1]])))
    assert len(FIXTURES) >= 8
    compare(config, frames)


@pytest.mark.parametrize(("family", "cap"), [("ipv4", 988), ("ipv6", 968)])
def test_records_past_the_engine_cap_are_left_to_the_engine(family: str, cap: int) -> None:
    # max-seg-payload 1000, chunk 5, TCP timestamps: the engine's segments carry at
    # most 1000 - 12 (IPv4) or 1000 - 32 (IPv6) bytes; one byte more and it makes
    # three, so the kernel split leaves the packet alone.
    config = settings_for(5, 1000)
    sizes = (5 + cap - 1, 5 + cap, 5 + cap + 1)
    frames = [frame(family, bytes(record_of(size)), tcp_options=TS_OPTS) for size in sizes]
    assert [len(engine_sends(config, f[14:])) for f in frames] == [2, 2, 3]
    compare(config, frames)


def record_of(size: int) -> bytes:
    """A whole ClientHello record of ``size`` bytes, header included."""
    return b"\x16\x03\x01" + (size - 5).to_bytes(2, "big") + b"\x01" + bytes(size - 6)


def test_a_record_over_the_kernel_limit_is_left_to_the_engine() -> None:
    # max-seg-payload 200 + chunk 5: records up to 205 bytes are the kernel's; a
    # 517-byte OpenSSL hello is cut by the engine into more than two segments.
    config = settings_for(5, 200)
    rec = FIXTURES["openssl_default.bin"]
    original = frame("ipv4", rec)
    [run] = ksplit_probe.run_isolated(program_params(config), [{"frame": original.hex()}])
    assert run["clones"] == [] and bytes.fromhex(run["out"]) == original
    assert len(engine_sends(config, original[14:])) > 2


# ------------------------------------------------------------- random records


def engine_cap(config: Config, original: bytes) -> int:
    """The most payload bytes the engine puts in one segment built from the headers
    of ``original``: max-seg-payload less what its headers have over 40 bytes."""
    p = parse(original)
    return config.max_seg_payload - max(0, len(p.ip) + len(p.tcp) - 40)


@st.composite
def packets(draw: st.DrawFn, config: Config) -> bytes:
    """An Ethernet frame whose payload is a ClientHello record of a size the kernel
    split may take for ``config``, header included: whole, or announcing more than
    the packet holds; half of them at most as large as the engine cuts in two (see
    engine_cap), half up to the kernel split's largest."""
    family = draw(st.sampled_from(FAMILIES))
    options = draw(st.sampled_from([None, TS_OPTS, TCP_OPTS_40]))
    kw: dict[str, object] = {}
    if family == "ipv4":
        kw = {"id": draw(st.integers(0, 0xFFFF)), "flags": draw(st.sampled_from([0, "DF"]))}
        if draw(st.booleans()):
            kw["options"] = [draw(st.sampled_from(IP_OPTIONS))]
    else:
        kw = {"fl": draw(st.integers(0, 0xFFFFF))}
    ip = ip_layer(family, **kw)
    params = params_for(config, 14)
    cap = engine_cap(config, frame(family, b"", tcp_options=options, ip=ip))
    high = params.max_payload
    if draw(st.booleans()) and params.min_payload <= params.chunk + cap:
        high = min(high, params.chunk + cap)
    size = draw(st.integers(params.min_payload, high))
    body = b"\x01" + draw(st.binary(min_size=size - 6, max_size=size - 6))
    announced = size - 5 + draw(st.sampled_from([0, 0, 0, 1, 300]))
    minor = draw(st.sampled_from([b"\x01", b"\x03", b"\x04", b"\x00", b"\x05"]))
    rec = b"\x16\x03" + minor + announced.to_bytes(2, "big")
    return frame(
        family,
        rec + body,
        draw(st.integers(0, 2**32 - 1)),
        sport=draw(st.integers(1024, 65535)),
        dport=DPORT,
        flags=draw(st.sampled_from(["PA", "A", "PAE", "PAC"])),
        tcp_options=options,
        ip=ip,
    )


@st.composite
def batches(draw: st.DrawFn) -> tuple[Config, list[bytes]]:
    chunk = draw(st.integers(1, 64))
    max_seg_payload = draw(st.sampled_from([max(6, chunk + 1), chunk + 80, 200, 600, 1000, 1460]))
    config = settings_for(chunk, max_seg_payload)
    return config, draw(st.lists(packets(config), min_size=1, max_size=8))


@settings(
    max_examples=int(os.environ.get("GOVPASS_KSPLIT_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batches())
def test_random_hellos_are_split_as_the_engine_splits_them(
    batch: tuple[Config, list[bytes]],
) -> None:
    config, frames = batch
    compare(config, frames)


def test_the_comparison_fails_on_a_changed_segment() -> None:
    """The checks above can fail: a kernel segment with one payload byte changed is
    not what the engine sends."""
    config = settings_for(5, 1460)
    original = frame("ipv4", FIXTURES["openssl_tls12.bin"], sport=SPORT)
    [run] = ksplit_probe.run_isolated(program_params(config), [{"frame": original.hex()}])
    rest = bytearray(bytes.fromhex(run["out"]))
    rest[-1] ^= 0x01
    engine_rest = parse(original[:14] + engine_sends(config, original[14:])[1])
    assert without_checksums(parse(bytes(rest))) != without_checksums(engine_rest)
    assert without_checksums(parse(bytes.fromhex(run["out"]))) == without_checksums(engine_rest)
