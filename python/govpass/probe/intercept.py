"""The probe's own connections through govpass's engine, and nothing else.

Every probe socket carries the daemon's mark bit, so a running ``govpass run`` leaves
it alone (its rules and the kernel split skip that bit). Sockets that should be split
also carry :data:`QUEUE_BIT`; probe-only rules in their own chain send their packets
(not SYNs) to a private NFQUEUE served in this process by an
:class:`~govpass.backends.nfqueue.NfqueueWorker` in a thread. What the engine releases
or injects carries :data:`DONE_BIT` as well and is not queued again::

    mangle OUTPUT   -p tcp --dport PORT -m mark --mark QUEUE_BIT/QUEUE_BIT -> GOVPASS_PROBE_<Q>
    GOVPASS_PROBE_<Q>
        mark has DONE_BIT        RETURN
        SYN flag set             RETURN
                                 NFQUEUE --queue-num Q --queue-bypass

The chain is named for the queue: a daemon starting (which clears its own chains)
never touches it, nor does a second probe (it binds another queue); a chain for a
queue that was free is a leftover of a probe killed hard and is cleared first. The
strategy changes between attempts through the engine's profiles. Rules are planned
as argv lists here and removed on every exit path.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from govpass.config import Config
from govpass.errors import BackendError, FirewallError
from govpass.rules.runner import Runner
from govpass.runtime.signals import signals_raise
from govpass.strategy import Strategy

CHAIN_PREFIX = "GOVPASS_PROBE_"
TABLE = "mangle"
QUEUE_BIT = 0x04000000
DONE_BIT = 0x08000000
# Far from the daemon's default queue-num (200) and from small numbers people pick.
QUEUE_FIRST, QUEUE_LAST = 64800, 65299
BINARIES = {4: "iptables", 6: "ip6tables"}

Argv = list[str]


@dataclass(frozen=True)
class Marks:
    """The fwmarks of the probe's sockets and of what its engine sends."""

    daemon: int  # the daemon's mark: its rules skip packets carrying it

    def __post_init__(self) -> None:
        for name, bit in (("QUEUE_BIT", QUEUE_BIT), ("DONE_BIT", DONE_BIT)):
            if self.daemon & bit:
                raise BackendError(
                    f"the daemon's mark {self.daemon:#x} overlaps the probe's {name} "
                    f"{bit:#x}; choose another --mark for govpass run"
                )

    @property
    def plain(self) -> int:
        """Sockets that go out unsplit (and untouched by a running daemon)."""
        return self.daemon

    @property
    def split(self) -> int:
        """Sockets whose packets go through the probe's engine."""
        return self.daemon | QUEUE_BIT

    @property
    def engine(self) -> int:
        """What the probe's engine puts on released and injected packets."""
        return self.daemon | DONE_BIT


def _mask(bit: int) -> str:
    return f"{bit:#x}/{bit:#x}"


def chain_name(queue: int) -> str:
    return f"{CHAIN_PREFIX}{queue}"


def plan(queue: int, port: int, binary: str) -> tuple[list[Argv], list[Argv]]:
    """(install, remove) argv lists for one family: the chain is filled before
    anything jumps to it; removal takes the jump away first."""
    chain = chain_name(queue)
    pre = [binary, "-w", "-t", TABLE]
    jump = ["OUTPUT", "-p", "tcp", "-m", "tcp", "--dport", str(port)]
    jump += ["-m", "mark", "--mark", _mask(QUEUE_BIT), "-j", chain]
    body = [
        ["-A", chain, "-m", "mark", "--mark", _mask(DONE_BIT), "-j", "RETURN"],
        ["-A", chain, "-p", "tcp", "-m", "tcp", "--tcp-flags", "SYN", "SYN", "-j", "RETURN"],
        ["-A", chain, "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"],
    ]
    install = [[*pre, "-N", chain], *[[*pre, *r] for r in body], [*pre, "-I", *jump]]
    remove = [[*pre, "-D", *jump], [*pre, "-F", chain], [*pre, "-X", chain]]
    return install, remove


def _leftover_remove(queue: int, port: int, binary: str) -> list[Argv]:
    """Removes what a probe killed hard may have left on this queue (its jump for
    another port cannot be known; the chain is flushed, so such a jump queues nothing)."""
    _install, remove = plan(queue, port, binary)
    return remove


class Interceptor:
    """Rules + a queue + an engine thread; :meth:`use` picks the strategy."""

    def __init__(self, marks: Marks, port: int, runner: Runner | None = None) -> None:
        self.marks = marks
        self.port = port
        self.runner = runner or Runner()
        self.queue = -1
        self._removes: list[Argv] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker: object | None = None
        self.errors: list[str] = []

    def _bind(self) -> object:
        from govpass.backends.nfqueue import NfqueueWorker, queue_table

        taken = queue_table()
        cfg = replace(Config(), ports=(str(self.port),)).engine_config()
        last: Exception | None = None
        for queue in range(QUEUE_FIRST, QUEUE_LAST + 1):
            if queue in taken:
                continue
            worker = NfqueueWorker(queue, cfg, self.marks.engine, ipv6=True, packet_loop="python")
            try:
                worker.bind()
            except BackendError as e:
                worker.injector.close()
                last = e
                continue
            self.queue = queue
            return worker
        raise BackendError(f"no free NFQUEUE in {QUEUE_FIRST}..{QUEUE_LAST}: {last}")

    def start(self) -> None:
        worker = self._bind()
        self._worker = worker
        try:
            for family, binary in BINARIES.items():
                if self.runner.which(binary) is None:
                    if family == 4:
                        raise FirewallError(f"{binary} not found: the probe needs it")
                    continue
                install, remove = plan(self.queue, self.port, binary)
                for argv in _leftover_remove(self.queue, self.port, binary):
                    self.runner.run(argv, check=False)
                self._removes = remove + self._removes
                for argv in install:
                    self.runner.run(argv)
        except BaseException:
            self.stop()
            raise
        self._thread = threading.Thread(target=self._serve, name="probe-engine", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        from govpass.backends.nfqueue import NfqueueWorker

        worker = self._worker
        assert isinstance(worker, NfqueueWorker)
        try:
            worker.run(self._stop.is_set)
        except Exception as e:  # reported; the queue's bypass flag lets packets pass
            self.errors.append(f"{type(e).__name__}: {e}")

    def use(self, strategy: Strategy) -> None:
        """From now on, split flows of :attr:`Marks.split` sockets with ``strategy``."""
        from govpass._core import Profile
        from govpass.backends.nfqueue import NfqueueWorker

        worker = self._worker
        assert isinstance(worker, NfqueueWorker)
        profile = Profile(
            "probe", split_chunk=strategy.chunk, split_positions=list(strategy.positions)
        )
        worker.engine.set_profiles([profile])

    def stats(self) -> dict[str, object]:
        from govpass.backends.nfqueue import NfqueueWorker

        worker = self._worker
        return dict(worker.stats()) if isinstance(worker, NfqueueWorker) else {}

    def stop(self) -> None:
        """Removes the rules first (so nothing waits on a queue about to go), then
        stops the engine thread and unbinds the queue. Idempotent."""
        from govpass.backends.nfqueue import NfqueueWorker

        removes, self._removes = self._removes, []
        for argv in removes:
            self.runner.run(argv, check=False)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        worker, self._worker = self._worker, None
        if isinstance(worker, NfqueueWorker):
            worker.close()


@contextmanager
def intercepting(marks: Marks, port: int, runner: Runner | None = None) -> Iterator[Interceptor]:
    """An :class:`Interceptor` for the block; SIGTERM/SIGHUP end it like Ctrl-C, and
    its rules go on every exit path."""
    icp = Interceptor(marks, port, runner)
    with signals_raise():
        try:
            icp.start()
            yield icp
        finally:
            icp.stop()
