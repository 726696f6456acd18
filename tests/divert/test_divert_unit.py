"""The divert backend without a network: the filter builder (checked by WinDivert's own
filter compiler and evaluator, as bundled in libebpfdivert), the queue parameters
(a real handle in a throw-away namespace; a fake one only for the error paths), the
fail-open paths of the worker, and the Linux leftover sweep."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pydivert
import pytest
from govpass import config as config_mod
from govpass.backends import divert, divert_leftovers
from govpass.config import Config
from govpass.errors import BackendError, ConfigError
from govpass.runtime import divert_service
from govpass.runtime.signals import stop_on_signals
from govpass.settings import BY_NAME
from pydivert import Direction, Packet, Param
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

HELLOS = Path(__file__).resolve().parents[1] / "fixtures" / "hellos"
HELLO = (HELLOS / "openssl_default.bin").read_bytes()
BIG_HELLO = (HELLOS / "chromium_sni_late.bin").read_bytes()  # 2000 bytes
SRC4, DST4 = "198.51.100.2", "203.0.113.2"
SRC6, DST6 = "2001:db8:1::2", "2001:db8:3::2"
ISN = 1_000_000
DEFAULT = (
    "outbound and !loopback and !impostor and (ip or ipv6) and tcp.DstPort == 443"
    " and tcp.PayloadLength > 0"
)


def tcp_packet(
    payload: bytes = b"",
    *,
    flags: str = "PA",
    family: int = 4,
    dport: int = 443,
    seq: int = ISN + 1,
    sport: int = 40000,
) -> bytes:
    ip = IP(src=SRC4, dst=DST4) if family == 4 else IPv6(src=SRC6, dst=DST6)
    pkt = ip / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=5000) / Raw(payload)
    return bytes(pkt)


def packet(
    raw: bytes,
    *,
    outbound: bool = True,
    ifidx: int = 2,
    loopback: bool = False,
    impostor: bool = False,
) -> Packet:
    return Packet(
        raw,
        interface=(ifidx, 0),
        direction=Direction.OUTBOUND if outbound else Direction.INBOUND,
        loopback=loopback,
        impostor=impostor,
    )


def compiles(text: str) -> bool:
    ok, pos, msg = pydivert.Divert.check_filter(text)
    assert ok, f"{text!r} rejected at {pos}: {msg}"
    return ok


# ------------------------------------------------------------------ filter text


def test_default_filter_is_the_seed_filter_extended() -> None:
    assert divert.build_filter(divert.FilterSpec()) == DEFAULT
    assert divert.build_filter(divert.filter_spec(Config())) == DEFAULT


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (divert.FilterSpec(ipv6=False), DEFAULT.replace("(ip or ipv6)", "ip")),
        (
            divert.FilterSpec(ports=(8443, 443, 443)),
            DEFAULT.replace("tcp.DstPort == 443", "(tcp.DstPort == 443 or tcp.DstPort == 8443)"),
        ),
        (divert.FilterSpec(exclude_ifidx=(7, 3)), DEFAULT + " and ifIdx != 3 and ifIdx != 7"),
        (divert.FilterSpec(include_ifidx=(4,)), DEFAULT + " and ifIdx == 4"),
        (divert.FilterSpec(include_ifidx=(5, 4)), DEFAULT + " and (ifIdx == 4 or ifIdx == 5)"),
        (divert.FilterSpec(hello_only=True), DEFAULT + " and " + divert.HELLO_PREFIX),
    ],
)
def test_filter_variants_and_they_compile(spec: divert.FilterSpec, expected: str) -> None:
    text = divert.build_filter(spec)
    assert text == expected
    assert compiles(text)


def test_filter_needs_a_port() -> None:
    with pytest.raises(ConfigError, match="ports"):
        divert.build_filter(divert.FilterSpec(ports=()))


def test_filter_spec_maps_interface_names(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {"eth0": 2, "wg0": 9, "lo": 1}

    def lookup(name: str) -> int:
        if name not in table:
            raise OSError(errno.ENODEV, "No such device")
        return table[name]

    monkeypatch.setattr(divert.socket, "if_nametoindex", lookup)
    monkeypatch.setattr(divert.interface_indexes, "__defaults__", (lookup,))
    cfg = config_mod.with_overrides(Config(), exclude_iface=("wg0",), ports=("443", "853"))
    spec = divert.filter_spec(cfg)
    assert spec.exclude_ifidx == (9,)
    assert spec.ports == (443, 853)
    with pytest.raises(ConfigError, match=r"invalid exclude-iface: no interface named 'tun7'"):
        divert.filter_spec(config_mod.with_overrides(Config(), exclude_iface=("tun7",)))
    with pytest.raises(ConfigError, match=r"invalid iface"):
        divert.filter_spec(config_mod.with_overrides(Config(), iface=("nope0",)))


def test_router_mode_is_refused_with_one_line() -> None:
    with pytest.raises(ConfigError, match="host mode only") as info:
        divert.filter_spec(config_mod.with_overrides(Config(), mode="router", iface=("lo",)))
    assert info.value.field == "mode"


def test_loopback_is_never_attached_and_excluded_interfaces_are_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(divert.socket, "if_nameindex", lambda: [(1, "lo"), (2, "eth0"), (3, "wg0")])
    assert divert.attach_interfaces(Config()) is None  # all of them, libebpfdivert's default
    cfg = config_mod.with_overrides(Config(), exclude_iface=("wg0",))
    assert divert.attach_interfaces(cfg) == ["eth0"]
    cfg = config_mod.with_overrides(Config(), iface=("eth0", "wg0"), exclude_iface=("wg0",))
    assert divert.attach_interfaces(cfg) == ["eth0"]


REPLY = {"outbound": False}
SERVER_HELLO = b"\x16\x03\x03\x00\x04\x02abc"
REPLY_CASES = [
    # name, raw packet, packet() kwargs, matched with --strategy auto
    ("hello", tcp_packet(HELLO), {}, True),
    ("server RST", tcp_packet(flags="R", sport=443, dport=40000), REPLY, True),
    ("ServerHello", tcp_packet(SERVER_HELLO, sport=443, dport=40000), REPLY, True),
    ("ServerHello v6", tcp_packet(SERVER_HELLO, family=6, sport=443, dport=40000), REPLY, True),
    ("server bulk data", tcp_packet(b"\x17\x03\x03xyz", sport=443, dport=40000), REPLY, False),
    ("server pure ack", tcp_packet(flags="A", sport=443, dport=40000), REPLY, False),
    ("reply from port 80", tcp_packet(flags="R", sport=80, dport=40000), REPLY, False),
    ("reply, excluded interface", tcp_packet(flags="R", sport=443), {**REPLY, "ifidx": 7}, False),
    ("reply, impostor", tcp_packet(flags="R", sport=443), {**REPLY, "impostor": True}, False),
]


@pytest.mark.parametrize(("name", "raw", "kwargs", "matched"), REPLY_CASES)
def test_strategy_auto_also_diverts_the_replies_that_decide(
    name: str, raw: bytes, kwargs: dict[str, Any], matched: bool
) -> None:
    spec = divert.FilterSpec(exclude_ifidx=(7,), replies=True)
    text = divert.build_filter(spec)
    assert compiles(text)
    assert packet(raw, **kwargs).matches(text) is matched, name


def test_filter_spec_asks_for_replies_only_with_strategy_auto() -> None:
    assert not divert.filter_spec(Config()).replies
    auto = config_mod.with_overrides(Config(), strategy="auto")
    assert divert.filter_spec(auto).replies
    # With lists the auto profiles keep their configured split here: no replies needed.
    listed = config_mod.load(env={}, flags={"hosts": "blocked.example", "strategy": "auto"})
    assert not divert.learns_here(listed) and not divert.filter_spec(listed).replies


def test_replies_reach_the_engine_only_with_strategy_auto(tmp_path: Path) -> None:
    """Inbound packets stay untouched unless a verdict needs them; then a server's
    RST decides the watched flow and the engine reports it."""
    from govpass.strategy import Strategy
    from govpass.strategy_learner import build_profiles

    auto = config_mod.with_overrides(
        Config(), strategy="auto", strategy_state=str(tmp_path / "s.json")
    )
    handle = FakeHandle()
    worker = fake_worker_for(auto, handle)
    worker.engine.set_profiles(build_profiles({}, Strategy(5)))
    worker.process([packet(tcp_packet(HELLO))])
    back = IP(src=DST4, dst=SRC4) / TCP(sport=443, dport=40000, flags="R", seq=5000)
    rst = packet(bytes(back), outbound=False)
    worker.process([rst])
    assert handle.sent[-1] == [bytes(rst.raw)]  # passed on unchanged
    events = worker.engine.take_events()
    assert [(host, failed) for _p, host, failed in events] == [("blocked.example", True)]


# ------------------------------------------------------- filter semantics (WinDivert)


CASES = [
    # name, raw packet, packet() kwargs, default filter, hello_only filter
    ("syn", tcp_packet(flags="S", seq=ISN), {}, False, False),
    ("pure ack", tcp_packet(flags="A"), {}, False, False),
    ("hello v4", tcp_packet(HELLO), {}, True, True),
    ("hello v6", tcp_packet(HELLO, family=6), {}, True, True),
    ("hello first 1448 bytes", tcp_packet(BIG_HELLO[:1448]), {}, True, True),
    ("hello continuation", tcp_packet(BIG_HELLO[1448:], seq=ISN + 1449), {}, True, False),
    ("plain http", tcp_packet(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), {}, True, False),
    ("handshake record, not a hello", tcp_packet(b"\x16\x03\x03\x00\x04\x10abc"), {}, True, False),
    ("5-byte first segment", tcp_packet(HELLO[:5]), {}, True, False),
    ("port 80", tcp_packet(HELLO, dport=80), {}, False, False),
    ("inbound", tcp_packet(HELLO), {"outbound": False}, False, False),
    ("loopback", tcp_packet(HELLO), {"loopback": True}, False, False),
    ("impostor", tcp_packet(HELLO), {"impostor": True}, False, False),
    ("excluded interface", tcp_packet(HELLO), {"ifidx": 7}, False, False),
]


@pytest.mark.parametrize(("name", "raw", "kwargs", "default", "hello_only"), CASES)
def test_filter_matches_what_can_matter(
    name: str, raw: bytes, kwargs: dict[str, Any], default: bool, hello_only: bool
) -> None:
    spec = divert.FilterSpec(exclude_ifidx=(7,))
    assert packet(raw, **kwargs).matches(divert.build_filter(spec)) is default, name
    spec = divert.FilterSpec(exclude_ifidx=(7,), hello_only=True)
    assert packet(raw, **kwargs).matches(divert.build_filter(spec)) is hello_only, name


def test_ipv4_only_filter_ignores_ipv6() -> None:
    text = divert.build_filter(divert.FilterSpec(ipv6=False))
    assert packet(tcp_packet(HELLO)).matches(text)
    assert not packet(tcp_packet(HELLO, family=6)).matches(text)


# ------------------------------------------------------------------- queue settings


def test_queue_settings_exist_with_seed_defaults() -> None:
    assert BY_NAME["queue-len"].default == 4096
    assert BY_NAME["queue-time"].default == 2000
    assert BY_NAME["queue-size"].default == 32 * 1024 * 1024
    cfg = config_mod.load(env={"GOVPASS_QUEUE_TIME": "500"}, flags={"queue_size": "65535"})
    assert (cfg.queue_time, cfg.queue_size) == (500, 65535)
    assert divert.queue_params(cfg) == {"queue-len": 4096, "queue-time": 500, "queue-size": 65535}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"queue_time": "99"}, "invalid queue-time: '99' (accepted: an integer in 100..=16000)"),
        ({"queue_size": "1e9"}, "invalid queue-size: '1e9' (accepted: an integer in 65535..=3355"),
    ],
)
def test_queue_settings_out_of_range_are_one_line(flags: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_mod.load(env={}, flags=flags)
    assert str(info.value).startswith(message)


def test_queue_len_is_held_to_windivert_limits() -> None:
    # queue-len is shared with NFQUEUE (16..1048576); WinDivert accepts 32..16384.
    for bad in (16, 16385):
        cfg = config_mod.with_overrides(Config(), queue_len=bad)
        with pytest.raises(ConfigError, match=r"queue-len for backend divert.*32\.\.=16384") as e:
            divert.queue_params(cfg)
        assert e.value.field == "queue-len"


class FakeHandle:
    """Stands in for pydivert.Divert in the error paths only."""

    def __init__(self, refuse: Param | None = None, keep: dict[Param, int] | None = None) -> None:
        self.refuse, self.keep = refuse, keep or {}
        self.values: dict[Param, int] = {}
        self.is_open = False
        self.sent: list[list[bytes]] = []
        self.packets: list[Packet] = []
        self.fail_sends_with_payload_len: set[int] = set()

    def open(self) -> FakeHandle:
        self.is_open = True
        return self

    def close(self) -> None:
        self.is_open = False

    def set_param(self, name: Param, value: int) -> int:
        if name == self.refuse:
            raise OSError(errno.EINVAL, "ebpfdivert_set_param: Invalid argument")
        self.values[name] = self.keep.get(name, value)
        return 1

    def get_param(self, name: Param) -> int:
        return self.values[name]

    def send_batch(self, packets: list[Packet], recalculate_checksum: bool = True) -> int:
        assert recalculate_checksum is False  # the engine's checksums are final
        ok = [p for p in packets if len(p.payload or b"") not in self.fail_sends_with_payload_len]
        self.sent.append([bytes(p.raw) for p in ok])
        self.packets += ok
        return len(ok)


def test_refused_parameter_is_one_line_naming_the_setting() -> None:
    handle = FakeHandle(refuse=Param.QUEUE_TIME)
    with pytest.raises(BackendError, match=r"refused queue-time=2000: .*Invalid argument"):
        divert.apply_queue_params(handle, divert.queue_params(Config()))


def test_parameter_not_taken_is_reported() -> None:
    handle = FakeHandle(keep={Param.QUEUE_SIZE: 4194304})
    with pytest.raises(BackendError, match=r"kept queue-size=4194304 after setting 33554432"):
        divert.apply_queue_params(handle, divert.queue_params(Config()))


def test_worker_closes_the_handle_when_parameters_fail() -> None:
    handle = FakeHandle(refuse=Param.QUEUE_LEN)
    worker = divert.DivertWorker(Config(), factory=lambda f, i: handle)
    with pytest.raises(BackendError, match="queue-len"):
        worker.open()
    assert not handle.is_open and worker.handle is None


REAL_HANDLE_SCRIPT = r"""
import json, sys
from govpass import config
from govpass.backends.divert import DivertWorker
cfg = config.load(env={}, flags=json.loads(sys.argv[1]))
w = DivertWorker(cfg)
w.open()
print(json.dumps({"applied": w.queue_applied, "filter": w.filter, "stats": w.stats()}))
w.close()
"""


@pytest.mark.netns
@pytest.mark.parametrize(
    "flags",
    [{}, {"queue_len": "32", "queue_time": "100", "queue_size": "65535"}],
    ids=["seed-defaults", "minimums"],
)
def test_parameters_on_a_real_handle(flags: dict[str, str]) -> None:
    if os.geteuid() != 0:
        pytest.fail("opening a real divert handle needs root (eBPF, TC)", pytrace=False)
    ns = f"gpdu-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        env = dict(os.environ, PYTHONPATH=str(Path(divert.__file__).resolve().parents[2]))
        argv = [sys.executable, "-c", REAL_HANDLE_SCRIPT, json.dumps(flags)]
        res = subprocess.run(
            ["ip", "netns", "exec", ns, *argv],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        expected = divert.queue_params(config_mod.load(env={}, flags=flags))
        assert out["applied"] == expected
        stats = out["stats"]
        assert stats["packets"] == 0 and stats["inject_errors"] == 0
        assert "divert_diverted" in stats  # libebpfdivert's per-handle counters
        left = subprocess.run(
            ["ip", "netns", "exec", ns, "tc", "filter", "show", "dev", "lo", "egress"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        assert "tc_divert" not in left  # close() detached the programs
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)


@pytest.mark.netns
def test_bpf_net_admin_net_raw_without_perfmon_are_refused() -> None:
    """pydivert's README names CAP_BPF + CAP_NET_ADMIN + CAP_NET_RAW; the verifier
    refuses libebpfdivert's programs without CAP_PERFMON too. One line says so."""
    if os.geteuid() != 0:
        pytest.fail("opening a real divert handle needs root (eBPF, TC)", pytrace=False)
    caps = "+bpf,+net_admin,+net_raw"
    setpriv = ["setpriv", f"--bounding-set=-all,{caps}", f"--inh-caps=-all,{caps}"]
    setpriv += [f"--ambient-caps=-all,{caps}", "--"]
    ns = f"gpdu-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        env = dict(os.environ, PYTHONPATH=str(Path(divert.__file__).resolve().parents[2]))
        argv = [*setpriv, sys.executable, "-c", REAL_HANDLE_SCRIPT, "{}"]
        res = subprocess.run(
            ["ip", "netns", "exec", ns, *argv],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert "BackendError: libebpfdivert could not load its eBPF programs" in last, res.stderr
    assert "CAP_PERFMON" in last


# ----------------------------------------------------------------- open errors


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (PermissionError(errno.EPERM, "ebpfdivert_open: Operation not permitted"), "needs root"),
        (OSError(errno.EINVAL, "Invalid filter at position 3: x"), "filter was rejected"),
        pytest.param(  # libebpfdivert's failure; Windows names WinDivert instead
            OSError(errno.ENOENT, "ebpfdivert_open: No such file"),
            "kernel 5.10\\+ with BTF",
            marks=pytest.mark.linux_only,
        ),
        (ImportError("libebpfdivert not found"), "cannot load libebpfdivert"),
        (NotImplementedError("Unsupported platform: darwin"), "not supported here"),
    ],
)
def test_open_failures_are_one_line(error: BaseException, message: str) -> None:
    class Failing(FakeHandle):
        def open(self) -> FakeHandle:
            raise error

    worker = divert.DivertWorker(Config(), factory=lambda f, i: Failing())
    with pytest.raises(BackendError, match=message) as info:
        worker.open()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("winerror", "words"),
    [
        (5, "Administrator"),
        (577, "signature"),
        (1275, "blocked"),
        (2, "WinDivert64.sys"),
        (1114, "driver could not be loaded"),
    ],
)
def test_windows_driver_failures_are_one_line(winerror: int, words: str) -> None:
    e = OSError(22, "WinError")
    e.winerror = winerror  # type: ignore[attr-defined]
    line = str(divert.open_error(e))
    assert words in line and "\n" not in line and line.startswith("cannot open WinDivert")


# ----------------------------------------------------------- worker fail-open paths


def hello_packets(hello: bytes = BIG_HELLO, family: int = 4) -> list[Packet]:
    first, rest = hello[:1448], hello[1448:]
    return [
        packet(tcp_packet(first, family=family)),
        packet(tcp_packet(rest, family=family, seq=ISN + 1 + len(first))),
    ]


def fake_worker_for(config: Config, handle: FakeHandle) -> divert.DivertWorker:
    worker = divert.DivertWorker(config, factory=lambda f, i: handle)
    worker.open()
    return worker


def fake_worker(handle: FakeHandle) -> divert.DivertWorker:
    return fake_worker_for(Config(), handle)


def test_split_segments_carry_the_original_address_and_valid_checksums() -> None:
    handle = FakeHandle()
    worker = fake_worker(handle)
    originals = hello_packets()
    originals[0].wd_addr.u.Reserved3[5] = 0xDEADBEEF  # captured context must survive
    worker.process(originals)
    sent = [Packet(raw) for batch in handle.sent for raw in batch]
    assert [len(p.payload) for p in sent] == [5, 1448, 547]
    assert b"".join(p.payload for p in sent) == BIG_HELLO
    for seg in handle.packets:  # the first original's address, context included
        assert seg.wd_addr.u.Reserved3[5] == 0xDEADBEEF and seg.wd_addr.TCPChecksum == 1
    for raw in (bytes(p.raw) for p in sent):
        rebuilt = IP(raw)
        del rebuilt[IP].chksum, rebuilt[TCP].chksum
        assert bytes(IP(bytes(rebuilt))) == raw  # scapy recomputes the same checksums
    stats = worker.stats()
    assert stats["splits"] == 1 and stats["inject_sent"] == 3 and stats["inject_errors"] == 0


def test_segment_address_is_a_copy_of_the_original() -> None:
    original = hello_packets()[0]
    original.wd_addr.u.Reserved3[5] = 0xDEADBEEF
    seg = divert.DivertWorker._segment(tcp_packet(b"x"), original)
    assert seg.wd_addr.u.Reserved3[5] == 0xDEADBEEF
    assert seg.wd_addr.Outbound == 1 and seg.wd_addr.u.Network.IfIdx == 2
    assert seg.wd_addr.TCPChecksum == 1 and seg.wd_addr.IPChecksum == 1
    assert ctypes.addressof(seg.wd_addr) != ctypes.addressof(original.wd_addr)


def test_failed_injection_resends_the_originals() -> None:
    handle = FakeHandle()
    handle.fail_sends_with_payload_len = {547}  # the last segment cannot be injected
    worker = fake_worker(handle)
    originals = hello_packets()
    worker.process(originals)
    last = handle.sent[-1]
    assert last == [bytes(p.raw) for p in originals]  # fail-open: same bytes as before
    stats = worker.stats()
    assert stats["fail_open_resent"] == 2 and stats["inject_errors"] == 1


def test_engine_error_passes_the_packet_unchanged() -> None:
    class Broken:
        def process(self, *args: Any) -> None:
            raise RuntimeError("boom")

        def stats(self) -> dict[str, Any]:
            return {}

    handle = FakeHandle()
    worker = fake_worker(handle)
    worker.engine = Broken()  # type: ignore[assignment]
    pkt = packet(tcp_packet(HELLO))
    worker.process([pkt])
    assert handle.sent[-1] == [bytes(pkt.raw)]
    assert worker.stats()["callback_errors"] == 1


def test_engine_panic_is_contained_and_the_packet_released() -> None:
    handle = FakeHandle()
    worker = fake_worker(handle)
    worker.engine._arm_panic()
    pkt = packet(tcp_packet(HELLO))
    worker.process([pkt])
    assert handle.sent[-1] == [bytes(pkt.raw)]


def test_impostors_and_inbound_packets_are_not_touched() -> None:
    handle = FakeHandle()
    worker = fake_worker(handle)
    pkts = [packet(tcp_packet(HELLO), impostor=True), packet(tcp_packet(HELLO), outbound=False)]
    worker.process(pkts)
    assert handle.sent[-1] == [bytes(p.raw) for p in pkts]
    assert worker.stats()["packets"] == 0 and worker.stats()["impostors_passed"] == 2


def test_held_packets_are_released_on_close() -> None:
    handle = FakeHandle()
    worker = fake_worker(handle)
    first = hello_packets()[0]
    worker.process([first])  # the rest of the record never comes
    assert worker.stats()["held_packets_now"] == 1
    worker.close()
    assert handle.sent[-1] == [bytes(first.raw)] and not handle.is_open


def test_expire_releases_after_collect_timeout() -> None:
    handle = FakeHandle()
    cfg = config_mod.with_overrides(Config(), collect_timeout=1.0)
    worker = divert.DivertWorker(cfg, factory=lambda f, i: handle)
    worker.open()
    first = hello_packets()[0]
    worker.process([first])
    import time

    time.sleep(0.01)
    worker.expire()
    assert handle.sent[-1] == [bytes(first.raw)]
    assert worker.stats()["fail_open"]["timeout"] == 1


# ------------------------------------------------------------------ doctor / availability


def test_describe_opens_nothing_and_reports_the_queue() -> None:
    cfg = config_mod.with_overrides(Config(), queue_len=1024, queue_time=500)
    info = divert.describe(cfg)
    assert info["backend"] == "divert" and info["workers"] == 1
    assert (info["queue_len"], info["queue_time_ms"], info["queue_size"]) == (1024, 500, 32 << 20)
    assert info["filter"] == DEFAULT
    assert info["pydivert"] == pydivert.__version__
    if sys.platform.startswith("linux"):
        assert info["implementation"].startswith("eBPFDivert 0.")
    json.dumps(info)  # printable as is


def test_unavailable_reasons_are_one_line_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(divert.importlib.util, "find_spec", lambda name: None)
    assert "pip install" in str(divert.unavailable_reason())
    monkeypatch.undo()
    if not sys.platform.startswith("linux"):
        return
    monkeypatch.setattr(divert, "_libebpfdivert", lambda: None)
    assert "libebpfdivert cannot be loaded" in str(divert.unavailable_reason())
    monkeypatch.undo()
    import govpass.privileges

    # Even uid 0 is checked: root in a container often lacks CAP_BPF/CAP_PERFMON.
    monkeypatch.setattr(govpass.privileges, "effective_capabilities", lambda: 1 << 12)
    reason = str(divert.unavailable_reason())
    assert reason.endswith("(missing CAP_BPF, CAP_PERFMON, CAP_NET_RAW)"), reason
    with pytest.raises(BackendError, match="needs root or CAP_BPF, CAP_PERFMON"):
        divert.check_privileges()
    everything = (1 << 12) | (1 << 13) | (1 << 38) | (1 << 39)
    monkeypatch.setattr(govpass.privileges, "effective_capabilities", lambda: everything)
    divert.check_privileges()
    sys_admin = (1 << 12) | (1 << 13) | (1 << 21)  # stands in for CAP_BPF and CAP_PERFMON
    monkeypatch.setattr(govpass.privileges, "effective_capabilities", lambda: sys_admin)
    divert.check_privileges()


# ------------------------------------------------------------------ run helpers


# Ctrl-C, SIGTERM, and Ctrl-Break (Windows' console stop, SIGBREAK).
STOP_SIGNALS = [signal.SIGINT, signal.SIGTERM] + (
    [signal.SIGBREAK] if hasattr(signal, "SIGBREAK") else []
)


@pytest.mark.parametrize("signum", STOP_SIGNALS)
def test_stop_on_signals_sets_a_flag_instead_of_raising(signum: int) -> None:
    before = signal.getsignal(signum)
    with stop_on_signals() as stopped:
        assert not stopped()
        # raise_signal, not os.kill: on Windows os.kill terminates the process.
        signal.raise_signal(signum)
        assert stopped()
    assert signal.getsignal(signum) is before


def tc_entry(pref: int, handle: str, name: str, prog_id: int) -> dict[str, Any]:
    return {
        "protocol": "all",
        "pref": pref,
        "kind": "bpf",
        "chain": 0,
        "options": {"handle": handle, "prog": {"id": prog_id, "name": name}},
    }


def test_orphaned_filters_are_only_dead_libebpfdivert_programs() -> None:
    filters = {
        ("eth0", "egress"): [
            {"protocol": "all", "pref": 30001, "kind": "bpf", "chain": 0},  # the chain head
            tc_entry(30001, "0x1", "tc_divert_egres", 138),  # orphan
            tc_entry(30001, "0x2", "tc_divert_egres", 144),  # live
            tc_entry(49152, "0x1", "cilium_egress", 99),  # somebody else's
        ],
        ("lo", "ingress"): [tc_entry(30002, "0x1", "tc_divert_ingre", 137)],
    }
    assert divert_leftovers.orphaned_filters(filters, {144, 99}) == [
        ("eth0", "egress", 30001, "0x1"),
        ("lo", "ingress", 30002, "0x1"),
    ]


def test_live_prog_ids_come_from_fdinfo(tmp_path: Path) -> None:
    (tmp_path / "12" / "fdinfo").mkdir(parents=True)
    (tmp_path / "12" / "fdinfo" / "5").write_text("pos:\t0\nprog_type:\t3\nprog_id:\t144\n")
    (tmp_path / "12" / "fdinfo" / "6").write_text("pos:\t0\nflags:\t02\n")
    (tmp_path / "self").mkdir()
    assert divert_leftovers.live_bpf_prog_ids(tmp_path) == {144}
    unreadable = tmp_path / "13" / "fdinfo" / "3"
    unreadable.parent.mkdir(parents=True)
    unreadable.mkdir()  # reading a directory fails like EACCES would: owners unknown
    assert divert_leftovers.live_bpf_prog_ids(tmp_path) is None


def test_status_line_adds_the_handle_counters() -> None:
    stats = {"packets": 4, "splits": 1, "fail_open": {"timeout": 1}, "divert_diverted": 9}
    text = divert_service.status_line(stats)
    assert "packets=4" in text and "fail_open=timeout:1" in text
    assert text.endswith("divert_diverted=9")


# ------------------------------------------------------------------ targeting


def test_host_profiles_decide_what_is_split() -> None:
    handle = FakeHandle()
    cfg = config_mod.load(env={}, flags={"hosts": "blocked.example"})
    worker = fake_worker_for(cfg, handle)
    other = (HELLOS / "openssl_co_uk.bin").read_bytes()  # www.sub.example.co.uk
    worker.process([packet(tcp_packet(HELLO)), packet(tcp_packet(other, sport=40001))])
    sizes = [len(Packet(raw).payload) for batch in handle.sent for raw in batch]
    assert sorted(sizes) == sorted([5, len(HELLO) - 5, len(other)])  # only the listed name
    assert worker.stats()["splits"] == 1


def test_list_files_are_watched_and_reloaded_on_request(tmp_path: Path) -> None:
    hostlist = tmp_path / "hosts.txt"
    hostlist.write_text("nothing.example\n")
    cfg = config_mod.load(env={}, flags={"hostlist": str(hostlist)})
    handle = FakeHandle()
    worker = fake_worker_for(cfg, handle)
    logged: list[str] = []
    assert worker.watch_lists(logged.append)
    worker.process([packet(tcp_packet(HELLO))])
    assert worker.stats()["splits"] == 0
    hostlist.write_text("blocked.example\n")
    worker.request_reload()  # what SIGHUP does
    worker.expire()  # the timer tick polls the watcher
    assert any("lists reloaded (SIGHUP)" in m for m in logged), logged
    worker.process([packet(tcp_packet(HELLO, family=6))])
    stats = worker.stats()
    assert stats["splits"] == 1 and stats["list_reloads"] == 1


def test_auto_learning_is_refused_with_one_line(tmp_path: Path) -> None:
    cfg = config_mod.load(env={}, flags={"hostlist_auto": str(tmp_path / "auto.txt")})
    with pytest.raises(ConfigError, match="hostlist-auto is not supported by backend divert"):
        divert.DivertWorker(cfg, factory=lambda f, i: FakeHandle())


def test_a_bad_list_stops_the_start(tmp_path: Path) -> None:
    cfg = config_mod.load(env={}, flags={"hostlist": str(tmp_path / "missing.txt")})
    with pytest.raises(ConfigError):
        divert.DivertWorker(cfg, factory=lambda f, i: FakeHandle())


def test_strategy_auto_is_refused_on_freebsd_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "platform", "freebsd14")
    auto = config_mod.with_overrides(
        Config(), strategy="auto", strategy_state=str(tmp_path / "s.json")
    )
    with pytest.raises(ConfigError, match="strategy auto: not supported by the FreeBSD") as info:
        divert_service.run_divert(auto, lambda _m: None)
    assert info.value.field == "strategy" and "\n" not in str(info.value)
    assert not (tmp_path / "s.json").exists()
