"""Linux NFQUEUE backend: one worker per queue, fed by ``netfilterqueue``.

Held packets stay in the kernel without a verdict and are accepted
unmodified on fail-open. Two queue settings that ``netfilterqueue`` does not
expose are set over its own netlink socket: the fail-open flag (a full queue
accepts instead of dropping) and NETLINK_NO_ENOBUFS (an overrun does not
surface as an error storm).
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from govpass._core import ACCEPT, DROP, RELEASE, SEND, Engine, EngineConfig
from govpass.backends.inject import RawInjector
from govpass.errors import BackendError
from govpass.queue_counters import read_queue_table

SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_CONFIG = 2
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 0x1
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
UDP = 17  # IP protocol number
# The inode number of the initial user namespace (PROC_USER_INIT_INO).
INIT_USER_NS_INO = 0xEFFFFFFD


def packet_path(packet_loop: str, inject: str, quic_listed: bool) -> str:
    """How a worker with these settings handles packets: "python" (a
    netfilterqueue callback per packet; QUIC filtering needs it), "rust-raw"
    (the Rust loop, segments through raw sockets) or "rust-verdicts" (the Rust
    loop, a split's last segments in the verdicts of the packets they replace)."""
    if packet_loop != "rust" or quic_listed:
        return "python"
    if inject == "auto" and in_initial_user_namespace():
        return "rust-verdicts"
    return "rust-raw"


def in_initial_user_namespace(path: str = "/proc/self/ns/user") -> bool:
    """Whether this process runs in the initial user namespace. Recent kernels
    refuse to let a verdict change a packet from any other one (and silently
    drop the packet), so the Rust loop sends segments in verdicts only here."""
    try:
        return os.stat(path).st_ino == INIT_USER_NS_INO
    except OSError:
        return False


def config_flags_message(queue_num: int, flags: int, mask: int, seq: int = 1) -> bytes:
    """An NFQNL_MSG_CONFIG netlink message setting queue flags (with ACK request)."""
    # Attribute headers are host-endian; the values are big-endian u32.
    attrs = struct.pack("=HH", 8, NFQA_CFG_MASK) + struct.pack("!I", mask)
    attrs += struct.pack("=HH", 8, NFQA_CFG_FLAGS) + struct.pack("!I", flags)
    nfgen = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack("!H", queue_num)
    body = nfgen + attrs
    msg_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG
    header = struct.pack("=IHHII", 16 + len(body), msg_type, NLM_F_REQUEST | NLM_F_ACK, seq, 0)
    return header + body


def tune_queue_socket(fd: int, queue_num: int) -> None:
    """Sets fail-open and NO_ENOBUFS on the bound queue's netlink socket."""
    sock = socket.fromfd(fd, socket.AF_NETLINK, socket.SOCK_RAW)
    try:
        sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        sock.send(config_flags_message(queue_num, NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_FAIL_OPEN))
        # Waits with select rather than a socket timeout: the descriptor shares its
        # file with the binding's, and a timeout would leave that one non-blocking.
        ready, _, _ = select.select([sock], [], [], 1.0)
        if not ready:
            raise BackendError(f"queue {queue_num}: no answer to the fail-open request")
        reply = sock.recv(4096)
        if len(reply) >= 20:
            _, rtype = struct.unpack_from("=IH", reply)
            (err,) = struct.unpack_from("=i", reply, 16)
            if rtype == NLMSG_ERROR and err != 0:
                msg = os.strerror(-err)
                raise BackendError(f"queue {queue_num}: kernel refused the fail-open flag: {msg}")
    finally:
        sock.close()


def queue_table() -> dict[int, dict[str, int]]:
    """Bound queues from /proc: queue number -> portid, length, kernel drops, user drops
    (a line that does not parse is left out: see govpass.queue_counters)."""
    table = read_queue_table() or {}
    return {
        q: {
            "portid": row.portid,
            "queued": row.queued,
            "queue_dropped": row.queue_dropped,
            "user_dropped": row.user_dropped,
        }
        for q, row in table.items()
    }


# Timer period of a worker holding no packet: flow expiry, stats files, list
# reloads and the parent check need no more (the collect timeout needs `tick`).
IDLE_TICK = 0.25


def _no_beat(now: float) -> None:
    pass


class NfqueueWorker:
    """Binds one queue and runs the engine on its packets until stopped."""

    def __init__(
        self,
        queue_num: int,
        engine_config: EngineConfig,
        mark: int,
        queue_len: int = 4096,
        ipv6: bool = True,
        injector: RawInjector | None = None,
        copy_range: int = 0xFFFF,
        quic_listed: bool = False,
        packet_loop: str = "rust",
        inject: str = "auto",
    ) -> None:
        self.queue_num = queue_num
        self.mark = mark
        self.queue_len = queue_len
        self.copy_range = copy_range
        self.engine = Engine(engine_config)
        self.injector = injector or RawInjector(mark, ipv6=ipv6)
        self.errors = 0
        # --block-quic listed: the rules also queue QUIC Initials (UDP), decided
        # here with the engine's profiles.
        self.quic: Any = None
        if quic_listed:
            from govpass.quic import QuicFilter

            self.quic = QuicFilter(self.engine.choose)
        tick_ms = min(max(engine_config.collect_timeout_ms / 5, 5.0), 50.0)
        self.tick = tick_ms / 1000.0  # while packets are held (collect timeouts)
        self.idle_tick = max(self.tick, IDLE_TICK)  # otherwise
        self._nfq: Any = None
        self._beat: Callable[[float], None] = _no_beat
        # Rust: once bound, the engine reads the queue's socket itself (Engine.nfq_*).
        path = packet_path(packet_loop, inject, quic_listed)
        self.rust_loop = path != "python"
        self.in_verdicts = path == "rust-verdicts"

    def bind(self) -> None:
        from netfilterqueue import COPY_PACKET, NetfilterQueue

        nfq = NetfilterQueue()
        try:
            nfq.bind(
                self.queue_num,
                self._on_packet if self.quic is None else self._on_packet_or_quic,
                max_len=self.queue_len,
                mode=COPY_PACKET,
                range=self.copy_range,
            )
        except OSError as e:
            owner = queue_table().get(self.queue_num)
            if owner is not None:
                raise BackendError(
                    f"queue {self.queue_num} is already bound by another process "
                    f"(netlink portid {owner['portid']}); stop it or choose --queue-num"
                ) from e
            raise BackendError(f"cannot bind NFQUEUE {self.queue_num}: {e}") from e
        self._nfq = nfq
        tune_queue_socket(nfq.get_fd(), self.queue_num)
        if self.rust_loop:
            raw4, raw6 = self.injector.fds()
            self.engine.nfq_attach(
                nfq.get_fd(),
                self.queue_num,
                self.mark,
                raw4,
                raw6,
                in_verdicts=self.in_verdicts,
            )

    def _on_packet(self, pkt: Any) -> None:
        # netfilterqueue's run() reads until the socket is empty, which under a
        # steady flood may be never: the callback beats too.
        self._beat(time.monotonic())
        try:
            # outdev: the interface index, for profiles filtered by interface.
            result = self.engine.process(pkt.get_payload(), time.monotonic(), pkt, pkt.outdev)
        except Exception:
            # Never leave a packet without a verdict.
            self.errors += 1
            pkt.accept()
            return
        if result is None:
            pkt.set_mark(pkt.get_mark() | self.mark)
            pkt.accept()
        else:
            self.apply(result)

    def _on_packet_or_quic(self, pkt: Any) -> None:
        """The callback when QUIC Initials are queued too: UDP goes to the QUIC
        filter, TCP on to :meth:`_on_packet` (which stays the TCP-only callback
        otherwise)."""
        self._beat(time.monotonic())
        try:
            data = pkt.get_payload()
            udp = data[9 if data[0] >> 4 == 4 else 6] == UDP
            drop = udp and self.quic.should_drop(data, time.monotonic(), pkt.outdev)
        except Exception:
            # Never leave a packet without a verdict; a doubt lets it through.
            self.errors += 1
            pkt.accept()
            return
        if not udp:
            self._on_packet(pkt)
        elif drop:
            pkt.drop()
        else:
            pkt.accept()

    def apply(self, actions: list[Any]) -> None:
        """Carries out engine actions in order."""
        for a in actions:
            kind = a.kind
            if kind == SEND:
                self.injector.send(a.packet)
            elif kind == RELEASE:
                h = a.handle
                h.set_mark(h.get_mark() | self.mark)
                h.accept()
            elif kind == DROP:
                a.handle.drop()
            elif kind == ACCEPT:
                a.handle.accept()

    def run(
        self,
        should_stop: Callable[[], bool],
        on_tick: Callable[[], None] | None = None,
        beat: Callable[[float], None] | None = None,
    ) -> None:
        """Receives packets and fires the engine's timer until `should_stop()`.
        `beat(now)` is called each time the loop comes round (at least every
        `idle_tick` plus one batch of packets, busy or idle): the watchdog's heartbeat."""
        if self._nfq is None:
            self.bind()
        if beat is not None:
            self._beat = beat
        if self.rust_loop:
            self._run_rust(should_stop, on_tick)
            return
        nfq = self._nfq
        fd = nfq.get_fd()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        next_tick = time.monotonic() + self.tick
        while not should_stop():
            timeout = max(0.0, next_tick - time.monotonic())
            try:
                ready = poller.poll(timeout * 1000)
            except InterruptedError:
                continue
            if ready:
                nfq.run(block=False)
            now = time.monotonic()
            self._beat(now)
            if now >= next_tick:
                self.apply(self.engine.expire(now))
                if on_tick is not None:
                    on_tick()
            next_tick = self._next_tick(now, next_tick)

    def _run_rust(
        self, should_stop: Callable[[], bool], on_tick: Callable[[], None] | None
    ) -> None:
        """The loop in Rust: `nfq_run` waits for packets (at most until the next
        timer tick) and handles them; Python keeps the timer and the stop check."""
        next_tick = time.monotonic() + self.tick
        while not should_stop():
            # Bounded even when busy: it returns by `next_tick`, after one batch at most.
            self.engine.nfq_run(max(0.0, next_tick - time.monotonic()))
            now = time.monotonic()
            self._beat(now)
            if now >= next_tick:
                self.engine.nfq_expire(now)
                if on_tick is not None:
                    on_tick()
            next_tick = self._next_tick(now, next_tick)

    def _next_tick(self, now: float, next_tick: float) -> float:
        """The timer: every `tick` while packets are held, else every `idle_tick`
        (an idle worker wakes 4 times a second instead of 20)."""
        step = self.tick if self.engine.held_packets else self.idle_tick
        if now >= next_tick:
            return now + step
        return min(next_tick, now + step)

    def close(self) -> None:
        """Releases every held packet, then unbinds the queue."""
        try:
            if self.rust_loop and self._nfq is not None:
                self.engine.nfq_release_all()
            else:
                self.apply(self.engine.release_all())
        finally:
            if self._nfq is not None:
                self._nfq.unbind()
                self._nfq = None
            self.injector.close()

    def stats(self) -> dict[str, Any]:
        s = dict(self.engine.stats())
        s["inject_sent"] = self.injector.sent
        s["inject_errors"] = self.injector.errors
        if self.rust_loop and self._nfq is not None:
            s.update(self.engine.nfq_counters())
        s["callback_errors"] = self.errors
        if self.quic is not None:
            s.update(self.quic.stats())
        return s
