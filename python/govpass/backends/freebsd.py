"""FreeBSD backend: packets come from a divert(4) socket fed by ipfw (or pf) rules.

A divert socket hands user space the packet and a ``sockaddr_in``: for an
outgoing packet the address is INADDR_ANY and the port is the tag of the rule
that diverted it (the ipfw rule number). Writing a packet back with that same
address sends it on as outgoing, and ipfw resumes after that rule. So the
handle given to the engine is simply that address:

* ``None`` (passes now), RELEASE, ACCEPT: the original bytes go back with their
  own address (a divert socket cannot keep a packet in the kernel).
* SEND: the new segment goes back with the address of the flow's held packets.
* DROP: nothing is written; the kernel has already forgotten the packet.

Fail-open here means "write the original back": on an engine error, on a
timeout (``expire`` from the receive timeout), and at shutdown
(``release_all``). A diverted packet with no reader is dropped by the kernel,
so the rules are installed only after the socket is bound and are removed
before the socket closes.

The socket layer is injectable (anything with ``recvfrom``, ``sendto``,
``settimeout``, ``close``), which is how the tests drive this on Linux.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol

from govpass import host_os
from govpass._core import ACCEPT, DROP, RELEASE, SEND, Engine, EngineConfig
from govpass.errors import BackendError
from govpass.rules.bsd import (
    DEFAULT_DIVERT_PORT,
    DEFAULT_IPFW_RULE,
    DEFAULT_PF_ANCHOR,
    BsdFirewall,
    BsdRuleSpec,
)

# FreeBSD >= 14 has its own domain, socket(PF_DIVERT = 44, SOCK_RAW, 0), which
# CPython >= 3.12 can bind (socket.AF_DIVERT); older CPython rejects the family
# in bind(). The PF_INET flavour works everywhere (FreeBSD 14 still accepts it).
IPPROTO_DIVERT = 258  # netinet/in.h
RECV_BUFFER = 65535 + 1
SOCKET_BUFFER = 4 * 1024 * 1024
# A re-injected packet read back within this window means the rules divert our
# own packets (FreeBSD pf's loop check failing). Real TCP retransmissions of
# byte-identical segments never come this fast this often.
LOOP_WINDOW_S = 1.0
LOOP_LIMIT = 200

Address = Any  # what recvfrom returned; for AF_INET/AF_DIVERT ("0.0.0.0", tag)
Clock = Callable[[], float]


class DivertSocket(Protocol):
    def recvfrom(self, bufsize: int) -> tuple[bytes, Address]: ...
    def sendto(self, data: bytes, address: Address, /) -> int: ...
    def settimeout(self, value: float | None) -> None: ...
    def close(self) -> None: ...


class LoopDetected(BackendError):
    """govpass keeps reading back packets it wrote: the rules loop."""


def open_divert_socket(port: int, platform: str | None = None) -> socket.socket:
    """A divert socket bound to divert port `port` (root only)."""
    if not host_os.is_freebsd(platform):
        # Linux would even open it: protocol 258 is a valid raw protocol number there.
        raise BackendError(
            f"divert sockets exist on FreeBSD only (this is {platform or host_os.platform_text()})"
        )
    sock: socket.socket | None = None
    family = getattr(socket, "AF_DIVERT", None)
    try:
        if family is not None:
            # CPython >= 3.12 knows that AF_DIVERT addresses are sockaddr_in.
            with suppress(OSError):
                sock = socket.socket(family, socket.SOCK_RAW, 0)
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_DIVERT)
        sock.bind(("0.0.0.0", port))
    except PermissionError as e:
        raise BackendError("opening a divert socket needs root") from e
    except OSError as e:
        if sock is not None:
            sock.close()
        raise BackendError(
            f"cannot open divert port {port}: {e.strerror or e} "
            "(is ipdivert loaded? is the port taken by another process?)"
        ) from e
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
    return sock


def unavailable_reason(
    platform: str | None = None,
    euid: int | None = None,
    kldstat: Callable[[str], bool] | None = None,
) -> str | None:
    """None when divert sockets can be used here, else one line saying why not."""
    if not host_os.is_freebsd(platform):
        here = platform or host_os.platform_text()
        return f"divert sockets are used on FreeBSD only (this is {here})"
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        return "needs root (divert sockets, ipfw/pfctl)"
    has_module = kldstat or _kldstat
    if not has_module("ipdivert"):
        # ipdivert depends on ipfw, and ipfw with no rules blocks everything unless
        # net.inet.ip.fw.default_to_accept=1 was set before it loaded.
        return (
            'kernel module ipdivert is not loaded (ipdivert_load="YES" and '
            'net.inet.ip.fw.default_to_accept="1" in /boot/loader.conf, or firewall_enable='
            '"YES" first; it pulls in ipfw, which otherwise blocks all traffic)'
        )
    return None


def _kldstat(module: str) -> bool:
    try:
        proc = subprocess.run(["kldstat", "-q", "-m", module], check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


class DivertSocketWorker:
    """Runs the engine over one divert socket: receive, decide, write back."""

    def __init__(
        self,
        sock: DivertSocket,
        engine_config: EngineConfig,
        clock: Clock = time.monotonic,
        tick: float | None = None,
    ) -> None:
        self.sock = sock
        self.engine = Engine(engine_config)
        self.clock = clock
        if tick is None:
            tick = min(max(engine_config.collect_timeout_ms / 5, 5.0), 50.0) / 1000.0
        self.tick = tick
        self.next_tick = clock() + tick
        self.received = 0
        self.sent = 0
        self.send_errors = 0
        self.engine_errors = 0
        self.loops = 0
        # Hashes of packets written lately, in two generations so that
        # remembering stays O(1) however fast packets flow.
        self._written: dict[int, float] = {}
        self._written_prev: dict[int, float] = {}
        self._generation_start = clock()
        self._loop_times: deque[float] = deque()

    # -- writing

    def _send(self, packet: bytes, addr: Address) -> None:
        try:
            self.sock.sendto(packet, addr)
        except OSError:
            # EMSGSIZE (TSO-sized packet), ENOBUFS...: counted; TCP retransmits.
            self.send_errors += 1
            return
        self.sent += 1
        now = self.clock()
        if len(self._written) >= 4096 or now - self._generation_start > LOOP_WINDOW_S:
            self._written_prev, self._written = self._written, {}
            self._generation_start = now
        self._written[hash(packet)] = now

    def apply(self, actions: list[Any]) -> None:
        """Carries out engine actions in order (SENDs precede their flow's DROPs)."""
        for i, a in enumerate(actions):
            kind = a.kind
            if kind == SEND:
                self._send(a.packet, self._flow_address(actions, i))
            elif kind in (RELEASE, ACCEPT):
                self._send(a.packet, a.handle)
            elif kind == DROP:
                pass  # its bytes went out in the SEND segments

    @staticmethod
    def _flow_address(actions: list[Any], i: int) -> Address:
        # A SEND carries no handle; the held packets it replaces are in the same
        # list, and they all came with the same divert address.
        for a in actions[i + 1 :]:
            if a.handle is not None:
                return a.handle
        for a in reversed(actions[:i]):
            if a.handle is not None:
                return a.handle
        return ("0.0.0.0", 0)  # outgoing; ipfw starts at the first rule

    # -- reading

    def _check_loop(self, packet: bytes, now: float) -> None:
        h = hash(packet)
        seen = self._written.get(h, self._written_prev.get(h))
        if seen is None or now - seen > LOOP_WINDOW_S:
            return
        self.loops += 1
        while self._loop_times and now - self._loop_times[0] > LOOP_WINDOW_S:
            self._loop_times.popleft()
        self._loop_times.append(now)
        if len(self._loop_times) > LOOP_LIMIT:
            raise LoopDetected(
                f"{len(self._loop_times)} re-injected packets came back within "
                f"{LOOP_WINDOW_S:g} s: the divert rules catch govpass's own packets "
                "(FreeBSD pf cannot tell them apart; use ipfw)"
            )

    def handle_packet(self, packet: bytes, addr: Address) -> None:
        """One diverted packet: the engine decides, the socket writes back."""
        self.received += 1
        now = self.clock()
        self._check_loop(packet, now)
        try:
            actions = self.engine.process(packet, now, addr)
        except Exception:
            # The engine contains its own failures; this is the last net.
            self.engine_errors += 1
            self._send(packet, addr)
            return
        if actions is None:
            self._send(packet, addr)
        else:
            self.apply(actions)

    def fire_timer(self, force: bool = False) -> bool:
        """Runs `expire` when the tick is due; True when it ran."""
        now = self.clock()
        if not force and now < self.next_tick:
            return False
        self.apply(self.engine.expire(now))
        self.next_tick = now + self.tick
        return True

    def poll_once(self) -> bool:
        """Waits up to the next tick for one packet; False when none came."""
        self.sock.settimeout(max(0.0005, self.next_tick - self.clock()))
        try:
            packet, addr = self.sock.recvfrom(RECV_BUFFER)
        except TimeoutError:
            self.fire_timer()
            return False
        except InterruptedError:
            return False
        self.handle_packet(packet, addr)
        self.fire_timer()
        return True

    def run(
        self, should_stop: Callable[[], bool], on_tick: Callable[[], None] | None = None
    ) -> None:
        """Receives and decides until `should_stop()`; `on_tick` about every tick."""
        last = self.clock()
        while not should_stop():
            self.poll_once()
            if on_tick is not None and self.clock() - last >= self.tick:
                last = self.clock()
                on_tick()

    def drain(self, limit: int = 100_000) -> int:
        """Reads what is still queued on the socket (rules already removed) and
        lets the engine decide; returns how many packets were read."""
        n = 0
        self.sock.settimeout(0.0)
        while n < limit:
            try:
                packet, addr = self.sock.recvfrom(RECV_BUFFER)
            except (BlockingIOError, TimeoutError, InterruptedError):
                break
            except OSError:
                break
            n += 1
            self.handle_packet(packet, addr)
        return n

    def close(self) -> None:
        """Writes back every held original, then closes the socket."""
        try:
            self.apply(self.engine.release_all())
        finally:
            self.sock.close()

    def stats(self) -> dict[str, Any]:
        s = dict(self.engine.stats())
        s["divert_received"] = self.received
        s["inject_sent"] = self.sent
        s["inject_errors"] = self.send_errors
        s["callback_errors"] = self.engine_errors
        s["loops"] = self.loops
        return s


# ---------------------------------------------------------------- the daemon


@dataclass(frozen=True)
class FreeBSDOptions:
    """Settings of this backend that the shared configuration does not have."""

    divert_port: int = DEFAULT_DIVERT_PORT
    firewall: BsdFirewall | None = "ipfw"  # None: rules are managed by hand
    ipfw_rule: int = DEFAULT_IPFW_RULE
    pf_anchor: str = DEFAULT_PF_ANCHOR


def options_from(config: Any) -> FreeBSDOptions:
    """The FreeBSD options of a `govpass.config.Config`."""
    firewall = None if config.bsd_firewall == "none" else config.bsd_firewall
    return FreeBSDOptions(
        divert_port=config.divert_port,
        firewall=firewall,
        ipfw_rule=config.ipfw_rule,
        pf_anchor=config.pf_anchor,
    )


def rule_spec(config: Any, options: FreeBSDOptions) -> BsdRuleSpec:
    """The BSD rule spec for a `govpass.config.Config` and these options."""
    return BsdRuleSpec(
        divert_port=options.divert_port,
        ports=config.port_numbers,
        mode=config.mode,
        interfaces=config.iface,
        exclude_interfaces=config.exclude_iface,
        ipv4=True,
        ipv6=config.ipv6,
        ipfw_rule=options.ipfw_rule,
        pf_anchor=options.pf_anchor,
        pf_flavor="openbsd" if host_os.is_openbsd() else "freebsd",
    )
