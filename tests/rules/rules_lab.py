"""Throw-away network namespaces for the rule tests.

Namespaces get a per-run unique name; every namespace and process created here
is removed by the fixtures in conftest.py, also when a test fails.  Addresses
come only from 198.51.100.0/24, 203.0.113.0/24 and 2001:db8::/32.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from govpass.rules.runner import Runner

HERE = Path(__file__).resolve().parent
_COUNTER = itertools.count()


def unique_name(tag: str) -> str:
    return f"gpr{os.getpid() % 100000}{tag}{next(_COUNTER)}"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


@dataclass
class Netns:
    name: str
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    @property
    def runner(self) -> Runner:
        return Runner(self.prefix)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(*self.prefix, *argv, check=check)

    def spawn(self, *argv: str, ready: str | None = "READY") -> subprocess.Popen[str]:
        """Start a long-running process in the namespace; wait for its READY line."""
        proc = subprocess.Popen(
            [*self.prefix, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.procs.append(proc)
        if ready is not None:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != ready:
                proc.kill()
                _, err = proc.communicate(timeout=5)
                raise RuntimeError(f"{argv[:3]} did not start: {line!r} {err.strip()}")
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.procs.clear()


def make_netns(tag: str) -> Netns:
    ns = Netns(unique_name(tag))
    sh("ip", "netns", "add", ns.name)
    ns.run("ip", "link", "set", "lo", "up")
    return ns


def delete_netns(ns: Netns) -> None:
    ns.stop_all()
    sh("ip", "netns", "del", ns.name, check=False)


def link(a: Netns, b: Netns, net4: str, net6: str, a_host: int, b_host: int) -> tuple[str, str]:
    """veth between a and b; net4 like "198.51.100", net6 like "2001:db8:100:"."""
    tag = f"{os.getpid() % 100000}{next(_COUNTER)}"
    dev_a, dev_b = f"gpa{tag}", f"gpb{tag}"
    sh("ip", "link", "add", dev_a, "netns", a.name, "type", "veth",
       "peer", "name", dev_b, "netns", b.name)  # fmt: skip
    for ns, dev, host in ((a, dev_a, a_host), (b, dev_b, b_host)):
        ns.run("ip", "addr", "add", f"{net4}.{host}/24", "dev", dev)
        ns.run("ip", "-6", "addr", "add", f"{net6}:{host}/64", "dev", dev, "nodad")
        ns.run("ip", "link", "set", dev, "up")
    return dev_a, dev_b


def make_cert(workdir: Path) -> None:
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
       "-nodes", "-days", "2", "-subj", "/CN=test.example",
       "-addext", "subjectAltName=DNS:test.example",
       "-keyout", str(workdir / "key.pem"), "-out", str(workdir / "cert.pem"))  # fmt: skip


def start_server(ns: Netns, workdir: Path) -> None:
    ns.spawn(
        sys.executable, str(HERE / "tls_peer.py"), "server",
        str(workdir / "cert.pem"), str(workdir / "key.pem"), "443",
    )  # fmt: skip


@dataclass
class Lab:
    """client ─veth─ server, or client ─veth─ router ─veth─ server.

    ``gateway`` is the namespace that carries the rules and the queue consumer:
    the client itself in host mode, the router in router mode.
    """

    client: Netns
    server: Netns
    workdir: Path
    v4_server: str
    v6_server: str
    router: Netns | None = None
    wan_dev: str | None = None  # router's interface towards the server

    @property
    def gateway(self) -> Netns:
        return self.router or self.client

    @property
    def cafile(self) -> str:
        return str(self.workdir / "cert.pem")
