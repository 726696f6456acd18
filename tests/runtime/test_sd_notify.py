"""govpass.runtime.sd_notify over a real AF_UNIX datagram socket, as systemd listens."""

from __future__ import annotations

import os
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from govpass.runtime.sd_notify import Notifier, safe_status, socket_address, watchdog_period
from govpass.runtime.service import run
from scripted import Scripted

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no AF_UNIX")


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    try:
        yield sock, path
    finally:
        sock.close()


def _messages(sock: socket.socket) -> list[str]:
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode("ascii"))
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2)
    return out


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ready_and_status_reach_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.enabled and n.watchdog_period is None
    assert n.ready("splits=1 flows=2")
    assert sock.recv(4096) == b"READY=1\nSTATUS=splits=1 flows=2"
    assert n.status("splits=2 flows=2")
    assert not n.status("splits=2 flows=2")  # unchanged: not sent again
    assert n.stopping()
    assert _messages(sock) == ["STATUS=splits=2 flows=2", "STOPPING=1"]
    n.close()


def test_the_status_is_one_bounded_printable_line(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier(path)
    n.status("a\nREADY=1\x1b[2J\u202eé" + "x" * 1000)
    (got,) = _messages(sock)
    assert got.startswith("STATUS=a?READY=1?[2J??x")
    assert "\n" not in got and len(got) == len("STATUS=") + 400
    assert safe_status("fail_open=bad\\x0a:1") == "fail_open=bad\\x0a:1"


def test_an_abstract_socket_name(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("abstract AF_UNIX names are Linux's")
    name = f"govpass-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert n.ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
        n.close()


def test_the_watchdog_is_petted_at_most_every_half_period_and_only_when_healthy(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    clock = Clock()
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    n = Notifier(socket_address(path), watchdog_period(env), clock)
    assert n.watchdog_period == 4.0
    asked: list[int] = []

    def healthy() -> bool:
        asked.append(1)
        return ok

    ok = True
    assert n.pet(healthy)
    clock.now += 1.9
    assert not n.pet(healthy) and len(asked) == 1  # not due: health not even asked
    clock.now += 0.1
    ok = False
    assert not n.pet(healthy)  # due, but a worker is not running
    ok = True
    assert n.pet(healthy)
    assert _messages(sock) == ["WATCHDOG=1", "WATCHDOG=1"]


def test_a_watchdog_meant_for_another_process_or_malformed_is_off() -> None:
    assert watchdog_period({"WATCHDOG_USEC": "5000000"}) == 5.0
    assert watchdog_period({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"}, pid=2) is None
    for bad in ("", "0", "-5", "1e6", "\uff15"):
        assert watchdog_period({"WATCHDOG_USEC": bad}) is None, bad
    # No socket: no watchdog either.
    assert Notifier.from_env({"WATCHDOG_USEC": "5000000"}).watchdog_period is None


def test_no_socket_set_is_a_no_op() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert not n.ready("x") and not n.status("y") and not n.stopping()
    assert not n.pet(lambda: True)
    for odd in ("", "relative/path", "@", "vsock:2:1234"):
        assert socket_address(odd) is None, odd


def test_an_unreachable_socket_never_raises(tmp_path: Path) -> None:
    gone = Notifier(str(tmp_path / "nobody-listens"), watchdog=1.0)
    assert not gone.ready("x")
    assert not gone.pet(lambda: True)
    assert not gone.stopping()
    too_long = Notifier("/" + "x" * 300)  # longer than sun_path
    assert not too_long.ready("x")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:  # not a datagram socket
        stream.bind(str(tmp_path / "stream"))
        assert not Notifier(str(tmp_path / "stream")).ready("x")


def test_a_listener_that_does_not_read_cannot_stall_the_sender(
    listener: tuple[socket.socket, str],
) -> None:
    _, path = listener
    n = Notifier(path)
    sent = [n.send("STATUS=" + "x" * 2000) for _ in range(5000)]
    assert sent[0] and not sent[-1]  # the queue filled up; the sends did not wait


# ---------------------------------------------------------------- from the runtime's loop


def test_the_loop_says_ready_status_watchdog_and_stopping(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    n = Notifier(path, watchdog=0.0)  # a pet due at every poll
    run(Scripted(ticks=2), lambda _m: None, 0.0, interactive=False, notifier=n)
    got = _messages(sock)
    assert got[0] == "READY=1\nSTATUS=splits=0"
    assert got[-1] == "STOPPING=1"
    assert "STATUS=splits=1" in got and "STATUS=splits=2" in got
    assert got.count("WATCHDOG=1") >= 2
    assert got.index("WATCHDOG=1") > 0  # not before READY


def test_an_unhealthy_service_gets_no_pets(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier(path, watchdog=0.0)
    run(Scripted(healthy=lambda: False), lambda _m: None, 0.0, interactive=False, notifier=n)
    got = _messages(sock)
    assert "WATCHDOG=1" not in got and got[0].startswith("READY=1") and got[-1] == "STOPPING=1"
