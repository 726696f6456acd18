"""The daemon's kernel split: the tc egress program of :mod:`govpass.bpf.ksplit`
(C, loaded and attached by the Rust extension) on every interface the rules
cover, and the gate that tells the rules' pre-filter to leave it the hellos it
splits.

A ClientHello record that leaves whole in one packet (curl, OpenSSL, Python,
most browsers) is then split on the interface's egress path, with no trip to a
worker; records over several packets, and everything the engine alone can do
(split positions, host lists, auto-learning), still go through NFQUEUE.

The gate is a one-entry bpf array map read by the pre-filter. It is "on" only
while the program is attached to every covered interface; otherwise every
hello goes to the workers, as without the kernel split. Interfaces that appear
later are attached when rtnetlink reports them (a thread waits for that). The
program stays attached through bpf links owned by this process, so the kernel
removes it when the daemon exits in any way, SIGKILL included.
"""

from __future__ import annotations

import os
import select
import struct
import threading
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import Any

from govpass import links as _links
from govpass.bpf import ksplit
from govpass.bpf import syscall as sc
from govpass.config import Config
from govpass.interfaces import matches
from govpass.rules.spec import KernelSplitGate

_KEY0 = struct.pack("=I", 0)


def config_reason(config: Config) -> str | None:
    """Why the settings rule the kernel split out, or None when they allow it."""
    from govpass.targeting import Targeting

    if config.kernel_split == "off":
        return "kernel-split is off"
    if config.strategy == "auto":
        return "strategy auto (the engine chooses a strategy per host name)"
    if config.backend != "nfqueue":
        return f"backend {config.backend} (the kernel split works with nfqueue)"
    if config.firewall == "none":
        return "firewall none (the pre-filter that leaves hellos to it is not installed)"
    if config.prefilter == "conntrack":
        return "prefilter conntrack (the kernel split needs the bpf pre-filter)"
    if config.split_mode != "tls-hello":
        return f"split-mode {config.split_mode} (the kernel split cuts tls-hello records)"
    if config.split_pos:
        return "split-pos is set (cut positions need the engine)"
    if not 1 <= config.split_chunk <= ksplit.CHUNK_MAX:
        return f"split-chunk {config.split_chunk} (the kernel split takes 1..{ksplit.CHUNK_MAX})"
    if len(config.port_numbers) > ksplit.PORTS_MAX:
        n = len(config.port_numbers)
        return f"{n} ports (the kernel split takes at most {ksplit.PORTS_MAX})"
    if config.max_seg_payload + config.split_chunk < max(6, config.split_chunk + 1):
        return f"max-seg-payload {config.max_seg_payload} (too small for a whole hello)"
    if Targeting.from_config(config).active:
        return "host lists or IP sets choose the flows (the engine reads the names)"
    return None


def params_for(config: Config, l2: int) -> ksplit.Params:
    chunk = config.split_chunk
    return ksplit.Params(
        chunk=chunk,
        max_payload=min(ksplit.PAYLOAD_MAX, config.max_seg_payload + chunk),
        max_seg_payload=config.max_seg_payload,
        ports=config.port_numbers,
        mark=config.mark,
        local=config.mode == "host",
        l2=l2,
    )


IFB_REASON = "ifb devices carry traffic redirected from ingress, for traffic shapers"


def _in_rules(spec: Any, link: _links.Link) -> bool:
    if link.loopback or link.name == "lo" or matches(link.name, spec.exclude_interfaces):
        return False
    return not spec.interfaces or matches(link.name, spec.interfaces)


def covered(spec: Any, all_links: Iterable[_links.Link]) -> list[_links.Link]:
    """The interfaces whose egress the rules of ``spec`` cover, less ifb devices: what
    leaves an ifb is another interface's ingress (a shaper's redirect), not a flow
    this host or router sends, and a program there would only cost the shaper."""
    return [link for link in all_links if _in_rules(spec, link) and link.driver != "ifb"]


def left_alone(spec: Any, all_links: Iterable[_links.Link]) -> list[str]:
    """Names of the ifb devices the rules cover but the kernel split leaves alone."""
    return sorted(link.name for link in all_links if _in_rules(spec, link) and link.driver == "ifb")


def _bpf_link_fds() -> list[int]:
    """Every bpf link descriptor of this process (one an attach in another thread
    had just made when the process forked is not in our table yet)."""
    out = []
    with suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            with suppress(OSError, ValueError):
                if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:bpf_link":
                    out.append(int(name))
    return out


class KernelSplit:
    """Programs, links and gate of one daemon. :meth:`open` before the rules are
    installed (their pre-filter needs :attr:`gate`), :meth:`sync` once they are,
    :meth:`close` on the way out."""

    def __init__(self, config: Config, log: Callable[[str], None]) -> None:
        self.config = config
        self.log = log
        self.gate: KernelSplitGate | None = None
        self._gate_fd = -1
        self._programs: dict[int, ksplit.Loaded] = {}  # by link header size
        self._links: dict[int, tuple[str, int]] = {}  # ifindex -> (name, link fd)
        self._spec: Any = None
        self._on = False
        self._why_off = "not started"
        self._lock = threading.Lock()
        self._watcher: _links.LinkWatcher | None = None
        self._thread: threading.Thread | None = None
        self._stop_pipe: tuple[int, int] | None = None
        self._synced = False  # after the first sync, each attach is logged
        self._ifbs: list[str] = []  # ifb devices left alone, as last logged
        self._final: dict[str, int] | None = None  # the counters as they were at close
        # A process forked from the daemon (a worker started again) must not keep the
        # links: the program would outlive a detach or the daemon itself.
        os.register_at_fork(after_in_child=self._drop_in_child)

    # -- set-up ---------------------------------------------------------------------------
    def open(self) -> KernelSplitGate:
        """Loads the programs and creates the gate (off). Raises BpfError/OSError."""
        try:
            self._gate_fd = sc.map_create(sc.MAP_TYPE_ARRAY, 4, 4, 1)
            for l2 in (14, 0):
                self._programs[l2] = ksplit.Loaded(params_for(self.config, l2))
        except BaseException:
            self.close()
            raise
        params = self._programs[14].params
        self.gate = KernelSplitGate(
            self._gate_fd,
            params.min_payload,
            params.max_payload,
            params.chunk,
            params.max_seg_payload,
        )
        return self.gate

    def _drop_in_child(self) -> None:
        """In a forked child: close every descriptor of ours, touching nothing else
        (the lock may be held by a thread that does not exist here)."""
        fds = [fd for _, fd in self._links.values()] + _bpf_link_fds()  # also one half made
        fds += [fd for p in self._programs.values() for fd in (p.prog_fd, p.counters_fd)]
        fds += [p.scratch_fd for p in self._programs.values()]
        fds += [self._gate_fd, *(self._stop_pipe or ())]
        if self._watcher is not None:
            fds.append(self._watcher.sock.detach())  # the socket object forgets it
        for fd in set(fds):
            if fd >= 0:
                with suppress(OSError):
                    os.close(fd)
        self._links, self._programs, self._gate_fd = {}, {}, -1
        self._stop_pipe, self._watcher, self._thread = None, None, None
        self.gate = None

    def sync(self, spec: Any) -> None:
        """Attaches to every covered interface, detaches from the others, and opens
        the gate when all covered ones carry the program."""
        with self._lock:
            self._spec = spec
            self._sync_locked()

    def watch(self) -> None:
        """Follows interfaces that appear later, from a thread."""
        if self._thread is not None:
            return
        self._watcher = _links.LinkWatcher()
        self._stop_pipe = os.pipe()
        self._thread = threading.Thread(target=self._watch, name="govpass-links", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        assert self._watcher is not None and self._stop_pipe is not None
        while True:
            ready = select.select([self._watcher.fileno(), self._stop_pipe[0]], [], [])[0]
            if self._stop_pipe[0] in ready:
                return
            self._watcher.drain()
            with self._lock:
                if self._spec is not None:
                    try:
                        self._sync_locked()
                    except Exception as e:  # the thread must not die silently
                        self._set_gate(False, f"interface update failed: {e}")

    def _sync_locked(self) -> None:
        try:
            all_links = _links.dump()
        except _links.LinkError as e:
            self._set_gate(False, str(e))
            return
        want = {link.index: link for link in covered(self._spec, all_links)}
        ifbs = left_alone(self._spec, all_links)
        if ifbs and ifbs != self._ifbs:
            self.log(f"kernel split: leaves {', '.join(ifbs)} alone ({IFB_REASON})")
        self._ifbs = ifbs
        for index in [i for i in self._links if i not in want]:
            name, fd = self._links.pop(index)
            os.close(fd)
            self.log(f"kernel split: detached from {name}")
        problems = []
        for index, link in sorted(want.items()):
            if index in self._links:
                self._links[index] = (link.name, self._links[index][1])  # renamed?
                continue
            l2 = link.l2_bytes
            if l2 is None:
                problems.append(f"{link.name}: link type {link.kind} not supported")
                continue
            try:
                fd = self._programs[l2].attach(index)
            except sc.BpfError as e:
                problems.append(f"{link.name}: {e.strerror}")
                continue
            self._links[index] = (link.name, fd)
            if self._synced:
                self.log(f"kernel split: attached to {link.name}")
        self._synced = True
        if problems:
            self._set_gate(False, "; ".join(problems))
        else:
            self._set_gate(True, "")

    def _set_gate(self, on: bool, why_off: str) -> None:
        if self._gate_fd < 0:
            return
        sc.map_update(self._gate_fd, _KEY0, struct.pack("=I", 1 if on else 0))
        if on != self._on or (not on and why_off != self._why_off):
            self.log(f"kernel split: {self._describe(on, why_off)}")
        self._on, self._why_off = on, why_off

    def _describe(self, on: bool, why_off: str) -> str:
        if on:
            names = ", ".join(sorted(name for name, _ in self._links.values())) or "no interface"
            return f"on (tcx egress: {names})"
        return f"off ({why_off}); every hello goes to the workers"

    # -- reading ----------------------------------------------------------------------------
    @property
    def on(self) -> bool:
        return self._on

    def summary(self) -> str:
        with self._lock:
            return self._describe(self._on, self._why_off)

    def interfaces(self) -> list[str]:
        with self._lock:
            return sorted(name for name, _ in self._links.values())

    def counters(self) -> dict[str, int]:
        if self._final is not None:
            return dict(self._final)
        total = dict.fromkeys(ksplit.COUNTERS, 0)
        for program in self._programs.values():
            with suppress(sc.BpfError):
                for name, n in program.counters().items():
                    total[name] += n
        return total

    # -- tear-down --------------------------------------------------------------------------
    def close(self) -> None:
        """Gate off first (hellos go to the workers again), then every link and program."""
        if self._stop_pipe is not None:
            os.write(self._stop_pipe[1], b"x")
            if self._thread is not None:
                self._thread.join(5)
            for fd in self._stop_pipe:
                os.close(fd)
            self._stop_pipe, self._thread = None, None
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        with self._lock:
            with suppress(sc.BpfError):
                self._set_gate(False, "stopped")
            for _name, fd in self._links.values():
                os.close(fd)
            self._links.clear()
            if self._programs:
                self._final = self.counters()
            for program in self._programs.values():
                program.close()
            self._programs.clear()
            if self._gate_fd >= 0:
                os.close(self._gate_fd)
                self._gate_fd = -1
