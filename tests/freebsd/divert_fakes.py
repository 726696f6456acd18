"""A scripted divert socket, a fake clock, a fake command runner and a tiny
IPv4/IPv6 TCP packet builder/reader, so the FreeBSD backend runs on Linux."""

from __future__ import annotations

import errno
import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from govpass.errors import FirewallError
from govpass.rules.runner import CommandResult, Runner

HELLOS = Path(__file__).resolve().parents[1] / "fixtures" / "hellos"
SRC4, DST4 = bytes([198, 51, 100, 2]), bytes([203, 0, 113, 9])
SRC6 = bytes.fromhex("20010db8000000000000000000000002")
DST6 = bytes.fromhex("20010db8000000000000000000000009")
OUT_ADDR = ("0.0.0.0", 100)  # what recvfrom gives for a packet ipfw rule 100 diverted out
ISN = 1_000_000


def hello(name: str = "openssl_default.bin") -> bytes:
    return (HELLOS / name).read_bytes()


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _tcp(payload: bytes, seq: int, flags: int, sport: int, dport: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq % 2**32, 777, 5 << 4, flags, 502, 0, 0) + (
        payload
    )


def v4(payload: bytes, seq: int = ISN, flags: int = 0x18, sport: int = 40000, dport: int = 443):
    tcp = _tcp(payload, seq, flags, sport, dport)
    pseudo = SRC4 + DST4 + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0x1234, 0x4000, 64, 6, 0, SRC4, DST4)
    return ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:] + tcp


def v6(payload: bytes, seq: int = ISN, flags: int = 0x18, sport: int = 40000, dport: int = 443):
    tcp = _tcp(payload, seq, flags, sport, dport)
    pseudo = SRC6 + DST6 + struct.pack("!IxxxB", len(tcp), 6)
    tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
    return struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, SRC6, DST6) + tcp


@dataclass(frozen=True)
class Segment:
    seq: int
    flags: int
    payload: bytes
    checksums_ok: bool


def parse(packet: bytes) -> Segment:
    """Reads back a TCP packet and verifies its checksums."""
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 0xF) * 4
        total = struct.unpack_from("!H", packet, 2)[0]
        tcp = packet[ihl:total]
        pseudo = packet[12:16] + packet[16:20] + struct.pack("!BBH", 0, 6, len(tcp))
        ok = _csum(packet[:ihl]) == 0 and _csum(pseudo + tcp) == 0
    else:
        tcp = packet[40 : 40 + struct.unpack_from("!H", packet, 4)[0]]
        pseudo = packet[8:24] + packet[24:40] + struct.pack("!IxxxB", len(tcp), 6)
        ok = _csum(pseudo + tcp) == 0
    seq = struct.unpack_from("!I", tcp, 4)[0]
    offset = (tcp[12] >> 4) * 4
    return Segment(seq, tcp[13], bytes(tcp[offset:]), ok)


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeDivertSocket:
    """Returns scripted packets from recvfrom, records every sendto.

    Script items are (bytes, addr) pairs or exceptions to raise; an empty
    script behaves like a receive timeout (or EAGAIN in non-blocking mode).
    `clock` and `step` let each timeout advance a FakeClock, as a real wait would.
    """

    def __init__(
        self,
        script: Sequence[Any] = (),
        clock: FakeClock | None = None,
        step: float = 0.0,
        send_errno: int | None = None,
    ) -> None:
        self.script: deque[Any] = deque(script)
        self.sent: list[tuple[bytes, Any]] = []
        self.timeouts: list[float | None] = []
        self.closed = False
        self.clock = clock
        self.step = step
        self.send_errno = send_errno

    def push(self, packet: bytes, addr: Any = OUT_ADDR) -> None:
        self.script.append((packet, addr))

    def recvfrom(self, bufsize: int) -> tuple[bytes, Any]:
        assert not self.closed, "recvfrom on a closed socket"
        if not self.script:
            if self.timeouts and self.timeouts[-1] == 0.0:
                raise BlockingIOError(errno.EAGAIN, "would block")
            if self.clock is not None:
                self.clock.advance(self.timeouts[-1] if self.timeouts else self.step)
            raise TimeoutError("timed out")
        item = self.script.popleft()
        if isinstance(item, BaseException):
            raise item
        packet, addr = item
        assert len(packet) <= bufsize
        return packet, addr

    def sendto(self, data: bytes, address: Any, /) -> int:
        assert not self.closed, "sendto on a closed socket"
        if self.send_errno is not None:
            raise OSError(self.send_errno, "refused")
        self.sent.append((bytes(data), address))
        return len(data)

    def settimeout(self, value: float | None) -> None:
        self.timeouts.append(value)

    def close(self) -> None:
        self.closed = True


class FakeFirewall(Runner):
    """Plays ipfw and pfctl well enough for the executors: keeps a rule table
    and a pf anchor, records every call (and its stdin)."""

    def __init__(
        self,
        ipfw_rules: Sequence[str] = (),
        pf_main: str = 'anchor "govpass" all\n',
        fail_add: int | None = None,
    ) -> None:
        super().__init__()
        self.ipfw: list[str] = list(ipfw_rules)  # `ipfw list` lines
        self.pf_main = pf_main
        self.anchors: dict[str, str] = {}
        self.fail_add = fail_add  # index of the `ipfw add` that fails
        self.adds = 0
        self.calls: list[tuple[str, ...]] = []
        self.inputs: list[str | None] = []

    def _ipfw(self, argv: tuple[str, ...]) -> tuple[int, str, str]:
        verb, number = argv[1], int(argv[2])
        mine = [line for line in self.ipfw if int(line.split()[0]) == number]
        if verb == "add":
            self.adds += 1
            if self.fail_add is not None and self.adds - 1 == self.fail_add:
                return 64, "", "ipfw: getsockopt(IP_FW_XADD): Invalid argument"
            self.ipfw.append(f"{number:05d} " + " ".join(argv[3:]))
            return 0, self.ipfw[-1] + "\n", ""
        if not mine:
            return 65, "", f"ipfw: rule {number} does not exist"
        if verb == "list":
            return 0, "".join(line + "\n" for line in mine), ""
        if verb == "delete":
            self.ipfw = [line for line in self.ipfw if line not in mine]
            return 0, "", ""
        raise AssertionError(argv)

    def _pfctl(self, argv: tuple[str, ...], stdin: str | None) -> tuple[int, str, str]:
        if argv[1:] == ("-s", "rules"):
            return 0, self.pf_main, ""
        if argv[1] == "-k":
            return 0, "killed 0 states\n", ""
        anchor, rest = argv[2], argv[3:]
        if rest == ("-f", "-"):
            self.anchors[anchor] = stdin or ""
            return 0, "", ""
        if rest == ("-F", "rules"):
            self.anchors.pop(anchor, None)
            return 0, "", "rules cleared\n"
        if rest == ("-s", "rules"):
            text = self.anchors.get(anchor, "")
            return 0, "".join(f"{x}\n" for x in text.splitlines() if not x.startswith("#")), ""
        raise AssertionError(argv)

    def run(
        self, argv: Sequence[str], *, input_text: str | None = None, check: bool = True
    ) -> CommandResult:
        call = tuple(argv)
        self.calls.append(call)
        self.inputs.append(input_text)
        if call[0] == "ipfw":
            code, out, err = self._ipfw(call)
        elif call[0] == "pfctl":
            code, out, err = self._pfctl(call, input_text)
        else:
            code, out, err = 127, "", f"{call[0]}: command not found"
        result = CommandResult(call, code, out, err)
        if check and not result.ok:
            raise FirewallError(result.error_line())
        return result
