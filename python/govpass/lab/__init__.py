"""The govpass lab: client, censor and server in Linux network namespaces (root only).

Everything lives in namespaces named ``gp-<pid>-<hex>-<role>`` with addresses from the
documentation ranges; :class:`Lab` removes them and every process it started on exit,
also after an exception. Typical use::

    from govpass.lab import Lab

    with Lab(router=False) as lab:
        lab.start_server(names=["blocked.example", "allowed.example"])
        lab.start_censor("firstpacket", names=["blocked.example"])    # or "string"
        ok, detail = lab.client("curl", "blocked.example", family=4)  # (False, "timeout ...")
        pid = lab.spawn("client", ["govpass", "run"])                 # killed at teardown
        with lab.capture("client") as cap:
            lab.client("python", "allowed.example", family=6)
        for flow in cap.flows():
            print(flow.summary())                                     # sizes, seq, checksums

API (roles are ``client``, ``gateway`` (router mode only), ``censor``, ``server``):

``Lab(router=False, *, prefix=None, workdir=None, keep_workdir=False)``
    ``__enter__``/``start()`` build the topology; ``__exit__``/``close() -> list[str]``
    tear it down and return problems (none expected). ``leftovers() -> list[str]``
    names anything of this lab still present (namespaces, live processes).
``set_hosts(role, {name: addr})``
    What the system resolver answers there; DNS in every lab namespace goes to
    loopback (nothing listens), so no lookup leaves the lab or waits.
``ns(role) -> str``, ``address(role, family=4) -> str``, ``iface(role) -> str``
    Namespace name; the role's address (forwarders: client side); the interface where
    the role's traffic towards the server leaves (client ``eth0``, gateway ``wan0``).
``exec(role, argv, *, check=True, timeout=30.0, input=None) -> CompletedProcess[str]``
    Run a command to completion inside the role's namespace.
``spawn(role, argv, *, env=None, python=False) -> int``
    Start a background process there (``python=True``: argv goes to this interpreter,
    with the govpass package importable); output goes to ``log_of(pid)``. ``kill(pid)``
    stops it early; ``alive() -> list[int]`` lists the live ones.
``start_server(names=NAMES, *, kind="python"|"openssl", port=443) -> None``
    Self-signed certificate for ``names`` (``cafile`` property), TLS server in ``server``.
    ``server_log() -> list[dict]``: one record per connection (python server).
``start_censor(kind, names, *, rst=False, queue=0, also=()) -> None``
    ``kind`` in :data:`CENSOR_KINDS`: ``string``, ``firstpacket``, ``tspu`` (only a
    first segment of 1-2 bytes passes), ``reassemble`` (nothing split-only passes),
    ``address`` (``names`` are addresses, default the server's), ``splitreject`` (a
    server resetting first segments under 8 bytes), ``dropsecond`` (silently drops the
    data after the first segment once the first two show the name); ``also=[("splitreject",
    ["allowed.example"])]`` adds a box on the same queue.
    ``stop_censor()`` removes it; ``censor_decisions() -> list[dict]`` (queue censors' log),
    ``censor_drops() -> int`` (packets the string rules dropped).
``client(kind, name, family=4, *, timeout=5.0, role="client", port=443) -> (bool, str)``
    ``kind`` in :data:`CLIENT_KINDS`; ``clients_available() -> list[str]``.
``capture(role="client", iface=None, bpf="tcp port 443")``
    Context manager yielding a :class:`Capture`; after the block ``cap.path`` is a
    complete pcap and ``cap.flows()`` its :class:`FlowReport` list.

Things to know:

* Killed flows of earlier steps keep retransmitting their hello for a while; in a
  capture they show up as flows with ``syn_seen=False``. Filter on ``syn_seen``.
* Chromium permutes its TLS extensions and its ~2 KB hello spans two segments, so the
  SNI lands in the second one about half the time: the ``firstpacket`` censor then lets
  Chromium through even without govpass. Use curl/openssl/python as the baseline there.
* ``GOVPASS_LAB_KEEP=1`` (or ``keep_workdir=True``) keeps the work directory (logs,
  pcaps, certificate) after teardown.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from govpass.lab import censor as _censor
from govpass.lab import clients as _clients
from govpass.lab import server as _server
from govpass.lab.capture import Capture
from govpass.lab.netns import (
    NETNS_ETC,
    LabError,
    Processes,
    Topology,
    build,
    destroy,
    netns_list,
    ns_argv,
    plan,
    run,
    wait_for,
    write_etc,
)
from govpass.lab.wirecheck import FlowReport, Segment, analyze

__all__ = [
    "CENSOR_KINDS",
    "CLIENT_KINDS",
    "NAMES",
    "Capture",
    "FlowReport",
    "Lab",
    "LabError",
    "Segment",
    "analyze",
]

NAMES = ("blocked.example", "allowed.example")
RULE_CENSORS = ("string", "address")  # firewall rules in the censor namespace
# Programs on a queue in the censor namespace (govpass.lab.censor, .reassembly).
QUEUE_CENSORS = ("firstpacket", "tspu", "reassemble", "splitreject", "dropsecond")
CENSOR_KINDS = RULE_CENSORS + QUEUE_CENSORS
CLIENT_KINDS = _clients.KINDS
# The directory holding the govpass package, so `python -m govpass.lab.*` works in a
# namespace even when govpass is not installed.
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class Lab:
    def __init__(
        self,
        router: bool = False,
        *,
        prefix: str | None = None,
        workdir: Path | str | None = None,
        keep_workdir: bool = False,
    ) -> None:
        self.router = router
        self.prefix = prefix or f"gp-{os.getpid()}-{secrets.token_hex(3)}"
        self.topo: Topology = plan(self.prefix, router)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=self.prefix))
        self.keep_workdir = keep_workdir or os.environ.get("GOVPASS_LAB_KEEP") == "1"
        self.procs = Processes()
        self.notes: list[str] = []
        self.problems: list[str] = []
        self.cafile: Path | None = None
        self._server_kind = "python"
        self._server_log = self.workdir / "server.jsonl"
        self._censor: tuple[str, list[list[str]], int | None] | None = None
        self._censor_log = self.workdir / "censor.jsonl"
        self._spawned: list[subprocess.Popen[bytes]] = []
        self._started = False
        self._closed = False
        self._counter = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Lab:
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, iptables, tcpdump)")
        if self._closed:
            raise LabError("this lab was closed; make a new Lab")
        if self._started:
            return self
        self._started = True
        atexit.register(self.close)
        try:
            self.notes += build(self.topo)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> list[str]:
        """Kill every process, delete every namespace; idempotent. Returns problems."""
        if self._closed:
            return self.problems
        self._closed = True
        try:
            if self._started:
                atexit.unregister(self.close)
                try:
                    self.procs.kill_all(grace=2.0)
                finally:
                    self.problems += destroy(self.topo)
        finally:
            if self._own_workdir and not self.keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
        return self.problems

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def leftovers(self) -> list[str]:
        """What of this lab still exists: namespaces and processes it started."""
        left = [f"netns {ns}" for ns in netns_list() if ns.startswith(self.prefix + "-")]
        left += [
            f"{NETNS_ETC / ns}" for ns in self.topo.namespaces.values() if (NETNS_ETC / ns).exists()
        ]
        left += [f"pid {p.pid} {p.args!r}" for p in self._spawned if p.poll() is None]
        return left

    # -- topology and processes ----------------------------------------------------------

    def ns(self, role: str) -> str:
        return self.topo.ns(role)

    def address(self, role: str, family: int = 4) -> str:
        return self.topo.address(role, family)

    def set_hosts(self, role: str, hosts: Mapping[str, str]) -> None:
        """What the system resolver answers in ``role``'s namespace (name -> address);
        other names fail at once (the lab's DNS is loopback with nothing on it)."""
        write_etc(self.ns(role), hosts)

    def iface(self, role: str) -> str:
        self.topo.ns(role)
        return self.topo.wire_iface(role)

    def exec(
        self,
        role: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return run(ns_argv(self.ns(role), argv), check=check, timeout=timeout, input=input)

    def _python_env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        out = dict(env or {})
        path = os.environ.get("PYTHONPATH")
        out["PYTHONPATH"] = str(_PACKAGE_ROOT) + (os.pathsep + path if path else "")
        return out

    def spawn(
        self,
        role: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        python: bool = False,
    ) -> int:
        """Start ``argv`` in the background in ``role``'s namespace; returns its pid."""
        if not self._started or self._closed:
            raise LabError("spawn() needs a started lab")
        self._counter += 1
        name = re.sub(r"[^\w.-]", "_", Path(argv[0]).name if argv else "proc")
        log = self.workdir / f"{self._counter:02d}-{role}-{name}.log"
        if python:
            argv, env = [sys.executable, *argv], self._python_env(env)
        sp = self.procs.spawn(role, self.ns(role), argv, log, env)
        self._spawned.append(sp.popen)
        return sp.pid

    def log_of(self, pid: int) -> Path:
        sp = self.procs.procs.get(pid)
        if sp is None:
            raise LabError(f"pid {pid} is not a live lab process")
        return sp.log

    def kill(self, pid: int) -> int | None:
        return self.procs.kill(pid)

    def alive(self) -> list[int]:
        return self.procs.alive()

    def close_connections(self, role: str = "client", port: int = 443) -> None:
        """Destroy the TCP sockets of ``role`` towards ``port``, orphans included.

        A client that gave up on a censored connection leaves its kernel socket
        retransmitting the ClientHello for a minute or more; a daemon started next
        would see those hellos as failing connections of its own."""
        self.exec(role, ["ss", "-K", "-t", "-a", "dport", "=", f":{port}"], check=False)

    def _check_alive(self, pid: int, what: str) -> None:
        if pid not in self.procs.alive():
            log = self.procs.procs[pid].log if pid in self.procs.procs else None
            text = log.read_text(errors="replace")[-2000:] if log else ""
            raise LabError(f"{what} exited early: {text}")

    # -- server ------------------------------------------------------------------------------

    def start_server(
        self, names: Sequence[str] = NAMES, *, kind: str = "python", port: int = 443
    ) -> None:
        ips = [self.address("server", 4), self.address("server", 6)]
        cert, key = _server.make_cert(self.workdir, names, ips)
        self.cafile = cert
        self._server_kind = kind
        if kind == "python":
            pid = self.spawn(
                "server",
                [
                    "-m",
                    "govpass.lab.server",
                    "--cert",
                    str(cert),
                    "--key",
                    str(key),
                    "--port",
                    str(port),
                    "--log",
                    str(self._server_log),
                ],
                python=True,
            )
            pids = [pid]
        elif kind == "openssl":
            pids = [
                self.spawn("server", argv) for argv in _server.openssl_server_argvs(cert, key, port)
            ]
        else:
            raise ValueError(f"unknown server kind {kind!r} (python, openssl)")

        def listening() -> bool:
            for pid in pids:
                self._check_alive(pid, f"{kind} server")
            out = self.exec("server", ["ss", "-Hltn", f"sport = :{port}"]).stdout
            return len(out.strip().splitlines()) >= 2  # 0.0.0.0 and [::]

        wait_for(listening, 10.0, f"{kind} TLS server on port {port}", step=0.05)

    def server_log(self) -> list[dict[str, Any]]:
        if not self._server_log.exists():
            return []
        lines = self._server_log.read_text(encoding="utf-8").splitlines()
        return [rec for rec in map(json.loads, lines) if "event" not in rec]

    # -- censor ------------------------------------------------------------------------------

    def start_censor(
        self,
        kind: str,
        names: Sequence[str],
        *,
        rst: bool = False,
        queue: int = 0,
        also: Sequence[tuple[str, Sequence[str]]] = (),
    ) -> None:
        """``kind`` in :data:`CENSOR_KINDS`. For ``address``, ``names`` are the blocked
        addresses (empty: the server's). ``also``: further boxes on the same queue,
        as (kind, names) pairs, for the queue kinds."""
        if self._censor is not None:
            raise LabError("a censor is already running; stop_censor() first")
        if kind not in CENSOR_KINDS:
            raise ValueError(f"unknown censor kind {kind!r} ({', '.join(CENSOR_KINDS)})")
        if also and kind in RULE_CENSORS:
            raise ValueError(f"censor {kind!r} is a firewall rule: no boxes can go with it")
        if kind == "string":
            rules, pid = _censor.string_rules(names), None
        elif kind == "address":
            addrs = list(names) or [self.address("server", 4), self.address("server", 6)]
            rules, pid = _censor.address_rules(addrs), None
        else:
            self._censor_log.write_text("")
            argv = [
                "-m",
                "govpass.lab.censor",
                "--kind",
                kind,
                "--queue",
                str(queue),
                "--log",
                str(self._censor_log),
                *(["--rst"] if rst else []),
                *[f"--also={k}={','.join(n)}" for k, n in also],
                *names,
            ]
            pid = self.spawn("censor", argv, python=True)

            def ready() -> bool:
                self._check_alive(pid, f"{kind} censor")
                return _censor.READY in self._censor_log.read_text(encoding="utf-8")

            # The queue must be bound before packets go to it: --queue-bypass would
            # otherwise let them through uncensored.
            wait_for(ready, 10.0, f"{kind} censor to bind its queue", step=0.05)
            rules = _censor.queue_rules(queue)
        for argv in rules:
            self.exec("censor", argv)
        self._censor = (kind, rules, pid)

    def stop_censor(self) -> None:
        if self._censor is None:
            return
        _kind, rules, pid = self._censor
        self._censor = None
        for argv in rules:
            self.exec("censor", [("-D" if a == "-I" else a) for a in argv], check=False)
        if pid is not None:
            self.kill(pid)

    def censor_decisions(self) -> list[dict[str, Any]]:
        return _censor.read_decisions(self._censor_log)

    def censor_drops(self) -> int:
        """Packets dropped so far by the string-match rules (both families)."""
        total = 0
        for tool in ("iptables", "ip6tables"):
            out = self.exec("censor", [tool, "-w", "-L", "FORWARD", "-v", "-n", "-x"]).stdout
            for line in out.splitlines():
                fields = line.split()
                if "STRING" in line and len(fields) > 2 and fields[2] == "DROP":
                    total += int(fields[0])
        return total

    # -- clients and capture -----------------------------------------------------------------

    def clients_available(self) -> list[str]:
        return _clients.kinds_available()

    def client(
        self,
        kind: str,
        name: str,
        family: int = 4,
        *,
        timeout: float = 5.0,
        role: str = "client",
        port: int = 443,
    ) -> tuple[bool, str]:
        if self.cafile is None:
            raise LabError("start_server() first: clients need its certificate")
        target = _clients.Target(
            name,
            self.address("server", family),
            family,
            self.cafile,
            port,
            expect_sni=self._server_kind == "python",
        )
        return _clients.run_client(kind, self.ns(role), target, timeout, self.workdir)

    @contextlib.contextmanager
    def capture(
        self, role: str = "client", iface: str | None = None, bpf: str = "tcp port 443"
    ) -> Iterator[Capture]:
        self._counter += 1
        path = self.workdir / f"{self._counter:02d}-{role}.pcap"
        cap = Capture(self.procs, role, self.ns(role), iface or self.iface(role), path, bpf)
        cap.start()
        if cap._proc is not None:
            self._spawned.append(cap._proc.popen)
        try:
            yield cap
        finally:
            cap.stop()
