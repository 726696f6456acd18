"""The FreeBSD divert backend driven through a scripted socket (runs on Linux):
what goes back into the kernel, with which address, for each engine decision."""

from __future__ import annotations

import errno
import os
import signal
import sys
from pathlib import Path

import pytest
from divert_fakes import (
    ISN,
    OUT_ADDR,
    FakeClock,
    FakeDivertSocket,
    FakeFirewall,
    hello,
    parse,
    v4,
    v6,
)
from govpass import EngineConfig
from govpass.backends import freebsd
from govpass.backends.freebsd import DivertSocketWorker, FreeBSDOptions, LoopDetected
from govpass.cli import freebsd_cmd
from govpass.config import load
from govpass.errors import BackendError
from govpass.runtime import freebsd_service

HELLO = hello()  # 517-byte OpenSSL ClientHello


def worker_for(sock: FakeDivertSocket, clock: FakeClock, **engine: object) -> DivertSocketWorker:
    return DivertSocketWorker(sock, EngineConfig(**engine), clock=clock)  # type: ignore[arg-type]


def test_client_hello_is_reinjected_as_split_segments_with_its_address() -> None:
    clock = FakeClock()
    original = v4(HELLO)
    sock = FakeDivertSocket([(original, OUT_ADDR)], clock)
    worker = worker_for(sock, clock)

    assert worker.poll_once() is True

    assert original not in [data for data, _ in sock.sent], "the original must be dropped"
    assert [addr for _, addr in sock.sent] == [OUT_ADDR] * len(sock.sent)
    segments = [parse(data) for data, _ in sock.sent]
    assert len(segments) == 2
    assert len(segments[0].payload) == 5  # split-chunk default
    assert b"".join(s.payload for s in segments) == HELLO
    assert [s.seq for s in segments] == [ISN, ISN + 5]
    assert all(s.checksums_ok for s in segments)
    assert [bool(s.flags & 0x08) for s in segments] == [False, True]  # PSH on the last only
    stats = worker.stats()
    assert stats["splits"] == 1 and stats["inject_sent"] == 2 and stats["inject_errors"] == 0


def test_ipv6_client_hello_split_keeps_the_address() -> None:
    clock = FakeClock()
    sock = FakeDivertSocket([(v6(HELLO), OUT_ADDR)], clock)
    worker_for(sock, clock, split_positions=["sni"]).poll_once()

    segments = [parse(data) for data, _ in sock.sent]
    assert len(segments) == 3  # 5 bytes, up to the host name, the rest
    assert b"".join(s.payload for s in segments) == HELLO
    assert {addr for _, addr in sock.sent} == {OUT_ADDR}


def test_non_tls_goes_back_unchanged_with_its_address() -> None:
    clock = FakeClock()
    request = v4(b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n")
    fin = v4(b"", seq=ISN + 40, flags=0x11)
    addr = ("0.0.0.0", 101)
    sock = FakeDivertSocket([(request, addr), (fin, addr)], clock)
    worker = worker_for(sock, clock)

    worker.poll_once()
    worker.poll_once()

    assert sock.sent == [(request, addr), (fin, addr)]


def test_incomplete_hello_is_held_then_released_by_the_timer() -> None:
    clock = FakeClock()
    first_half = v4(HELLO[:200])
    sock = FakeDivertSocket([(first_half, OUT_ADDR)], clock)
    worker = worker_for(sock, clock, collect_timeout_ms=250.0)

    assert worker.poll_once() is True
    assert sock.sent == [], "an incomplete record is held"

    # Nothing more arrives: each receive timeout advances the clock by one tick.
    for _ in range(100):
        if sock.sent:
            break
        assert worker.poll_once() is False
    assert sock.sent == [(first_half, OUT_ADDR)]
    assert 0.25 <= clock.now - 1000.0 <= 0.25 + 2 * worker.tick
    assert worker.stats()["fail_open"]["timeout"] == 1


def test_hello_in_two_packets_is_split_when_the_second_arrives() -> None:
    clock = FakeClock()
    big = hello("chromium_sni_late.bin")  # 2000 bytes: two packets
    p1, p2 = v4(big[:1400]), v4(big[1400:], seq=ISN + 1400)
    sock = FakeDivertSocket([(p1, OUT_ADDR), (p2, OUT_ADDR)], clock)
    worker = worker_for(sock, clock)

    worker.poll_once()
    assert sock.sent == []
    worker.poll_once()

    segments = [parse(data) for data, _ in sock.sent]
    assert b"".join(s.payload for s in segments) == big
    assert max(len(s.payload) for s in segments) <= 1400  # never larger than the flow's own
    assert p1 not in [d for d, _ in sock.sent] and p2 not in [d for d, _ in sock.sent]


def test_engine_failure_fails_open() -> None:
    class Broken:
        def process(self, *args: object) -> None:
            raise RuntimeError("boom")

        def stats(self) -> dict[str, object]:
            return {}

    clock = FakeClock()
    packet = v4(HELLO)
    sock = FakeDivertSocket([(packet, OUT_ADDR)], clock)
    worker = worker_for(sock, clock)
    worker.engine = Broken()  # type: ignore[assignment]

    worker.poll_once()

    assert sock.sent == [(packet, OUT_ADDR)]
    assert worker.stats()["callback_errors"] == 1


def test_write_errors_are_counted_not_raised() -> None:
    clock = FakeClock()
    sock = FakeDivertSocket([(v4(b"x" * 100), OUT_ADDR)], clock, send_errno=errno.EMSGSIZE)
    worker = worker_for(sock, clock)

    worker.poll_once()

    assert worker.stats()["inject_errors"] == 1


def test_close_releases_held_packets_then_closes() -> None:
    clock = FakeClock()
    partial = v4(HELLO[:100])
    sock = FakeDivertSocket([(partial, OUT_ADDR)], clock)
    worker = worker_for(sock, clock)
    worker.poll_once()

    worker.close()

    assert sock.sent == [(partial, OUT_ADDR)]
    assert sock.closed


def test_drain_reads_what_is_left_without_waiting() -> None:
    clock = FakeClock()
    packets = [v4(b"data %d" % i, seq=ISN + 10 * i) for i in range(3)]
    sock = FakeDivertSocket([(p, OUT_ADDR) for p in packets], clock)
    worker = worker_for(sock, clock)

    assert worker.drain() == 3

    assert [d for d, _ in sock.sent] == packets
    assert sock.timeouts[-1] == 0.0


def test_own_packets_coming_back_stop_the_backend() -> None:
    clock = FakeClock()
    packet = v4(b"not tls at all")
    sock = FakeDivertSocket([(packet, OUT_ADDR)], clock)
    worker = worker_for(sock, clock)
    worker.poll_once()

    # A looping rule hands every written packet straight back.
    with pytest.raises(LoopDetected, match="use ipfw"):
        for _ in range(freebsd.LOOP_LIMIT + 5):
            sock.push(*sock.sent[-1])
            worker.poll_once()


def test_run_installs_rules_after_binding_and_removes_them_before_closing(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOVPASS_RUN_DIR", str(tmp_path))
    clock_packets = [v4(HELLO), v4(b"GET /", sport=40001)]
    sock = FakeDivertSocket([(p, OUT_ADDR) for p in clock_packets])
    runner = FakeFirewall()
    events: list[str] = []
    config = load(env={}, flags={"collect-timeout": "50"})

    def stop() -> bool:
        events.append(f"poll sent={len(sock.sent)}")
        return not sock.script

    final = freebsd_service.run_freebsd(
        config,
        options=FreeBSDOptions(),
        log=events.append,
        sock=sock,
        runner=runner,
        should_stop=stop,
    )

    adds = [c for c in runner.calls if c[:2] == ("ipfw", "add")]
    assert len(adds) == 3 and all(c[2:5] == ("100", "divert", "4430") for c in adds)
    assert runner.calls[-1] == ("ipfw", "delete", "100")
    assert runner.ipfw == []
    assert final["divert_received"] == 2 and final["splits"] == 1
    assert sock.closed
    assert events[0] == "ipfw rules installed (3 commands)"
    assert "stopping" not in events


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM to oneself ends the process")
def test_sigterm_stops_cleanly_and_nothing_queued_is_lost(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOVPASS_RUN_DIR", str(tmp_path))
    packets = [v4(b"payload %d" % i, seq=ISN + 20 * i) for i in range(5)]
    sock = FakeDivertSocket([(p, OUT_ADDR) for p in packets])
    fw = FakeFirewall()
    events: list[str] = []
    polls = 0

    def stop_after_first() -> bool:
        nonlocal polls
        polls += 1
        if polls == 2:
            signal.raise_signal(signal.SIGTERM)
        return False

    freebsd_service.run_freebsd(
        load(env={}), options=FreeBSDOptions(), log=events.append, sock=sock, runner=fw,
        should_stop=stop_after_first,
    )  # fmt: skip

    assert "stopping" in events
    assert [d for d, _ in sock.sent] == packets  # 1-2 by the loop, the rest by drain
    assert fw.ipfw == [] and sock.closed
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_rules_none_runs_without_touching_the_firewall(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOVPASS_RUN_DIR", str(tmp_path))
    sock = FakeDivertSocket([(v4(b"hello"), OUT_ADDR)])
    runner = FakeFirewall()
    freebsd_service.run_freebsd(
        load(env={}),
        options=FreeBSDOptions(firewall=None),
        log=lambda _m: None,
        sock=sock,
        runner=runner,
        should_stop=lambda: not sock.script,
    )
    assert runner.calls == []
    assert len(sock.sent) == 1 and sock.closed


@pytest.mark.parametrize(
    ("platform", "euid", "loaded", "expected"),
    [
        ("linux", 0, True, "FreeBSD only"),
        ("freebsd14", 1000, True, "needs root"),
        ("freebsd14", 0, False, "ipdivert is not loaded"),
        ("freebsd13", 0, True, None),
    ],
)
def test_unavailable_reason(platform: str, euid: int, loaded: bool, expected: str | None) -> None:
    reason = freebsd.unavailable_reason(platform, euid, lambda _m: loaded)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason


def test_opening_a_divert_socket_elsewhere_is_one_clear_error() -> None:
    with pytest.raises(BackendError, match="FreeBSD only"):
        freebsd.open_divert_socket(4430, platform="linux")


def test_command_line_plans_rules(capsys: pytest.CaptureFixture[str]) -> None:
    code = freebsd_cmd.main(["rules", "plan", "--divert-port", "989", "--ipfw-rule", "200"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[0].startswith("ipfw add 200 divert 989 tcp from any to any 443 out")


def test_command_line_rejects_bad_settings_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = freebsd_cmd.main(["rules", "plan", "--split-chunk", "abc"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("govpass: invalid split-chunk") and err.count("\n") == 1


def test_run_holds_the_run_lock_and_refuses_a_second_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from govpass.runtime.run_lock import claim_run_lock, release_run_lock, running_daemon

    monkeypatch.setenv("GOVPASS_RUN_DIR", str(tmp_path))
    seen: list[int | None] = []
    sock = FakeDivertSocket([(v4(b"hello"), OUT_ADDR)])

    def stop() -> bool:
        seen.append(running_daemon(tmp_path))
        return not sock.script

    freebsd_service.run_freebsd(
        load(env={}), options=FreeBSDOptions(), log=lambda _m: None, sock=sock,
        runner=FakeFirewall(),
        should_stop=stop,
    )  # fmt: skip
    assert seen and set(seen) == {os.getpid()}
    assert running_daemon(tmp_path) is None, "the lock went with the run"

    fd = claim_run_lock(tmp_path)
    try:
        second = FakeDivertSocket([])
        firewall = FakeFirewall()
        with pytest.raises(BackendError, match="already running with run directory"):
            freebsd_service.run_freebsd(
                load(env={}),
                options=FreeBSDOptions(),
                log=lambda _m: None,
                sock=second,
                runner=firewall,
            )
        assert firewall.calls == [] and not second.closed
    finally:
        release_run_lock(fd)
