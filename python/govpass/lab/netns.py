"""Network namespaces for the lab: topology, commands inside a namespace, owned processes.

Topology (direct mode)::

    client eth0 ──veth── lan0 censor srv0 ──veth── eth0 server

Router mode puts a ``gateway`` between client and censor::

    client eth0 ──veth── lan0 gateway wan0 ──veth── lan0 censor srv0 ──veth── eth0 server

Every address comes from the documentation ranges (RFC 5737 / RFC 3849), so nothing
the lab sends can be mistaken for real traffic, and no namespace has a link to the host.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROLES = ("client", "gateway", "censor", "server")


class LabError(RuntimeError):
    """A lab step failed; the message names the step and carries the tool's stderr."""


@dataclass(frozen=True)
class Link:
    """One veth pair: (namespace role, interface) at each end, with /v4 and /v6 addresses."""

    a_role: str
    a_if: str
    a_v4: str
    a_v6: str
    b_role: str
    b_if: str
    b_v4: str
    b_v6: str
    v4_prefix: int
    v6_prefix: int = 64


# Client-side link: client ↔ (gateway or censor).
LAN = ("198.51.100.2", "2001:db8:1::2", "198.51.100.1", "2001:db8:1::1", 26)
# Router mode only: gateway ↔ censor.
TRANSIT = ("198.51.100.65", "2001:db8:2::1", "198.51.100.66", "2001:db8:2::2", 26)
# Server-side link: censor ↔ server.
SERVER = ("203.0.113.1", "2001:db8:3::1", "203.0.113.2", "2001:db8:3::2", 24)


@dataclass(frozen=True)
class Topology:
    """Names and addresses of one lab instance; pure data, built by :func:`plan`."""

    prefix: str
    router: bool
    namespaces: Mapping[str, str]
    links: tuple[Link, ...]
    # role -> list of (family, destination or "default", gateway address)
    routes: Mapping[str, tuple[tuple[int, str, str], ...]]
    forwarders: tuple[str, ...]

    def ns(self, role: str) -> str:
        try:
            return self.namespaces[role]
        except KeyError:
            raise LabError(f"no {role!r} namespace in this lab (router={self.router})") from None

    def address(self, role: str, family: int = 4) -> str:
        """The address of ``role`` on its first link (for a forwarder: the client side)."""
        for link in self.links:
            if link.a_role == role:
                return link.a_v4 if family == 4 else link.a_v6
            if link.b_role == role:
                return link.b_v4 if family == 4 else link.b_v6
        raise LabError(f"no address for {role!r}")

    def interfaces(self, role: str) -> list[str]:
        out = [lk.a_if for lk in self.links if lk.a_role == role]
        out += [lk.b_if for lk in self.links if lk.b_role == role]
        return out

    def wire_iface(self, role: str) -> str:
        """The interface where ``role``'s traffic towards the server leaves it."""
        return {"client": "eth0", "gateway": "wan0", "censor": "srv0", "server": "eth0"}[role]


def plan(prefix: str, router: bool = False) -> Topology:
    roles = ("client", "gateway", "censor", "server") if router else ("client", "censor", "server")
    names = {r: f"{prefix}-{r}" for r in roles}
    c4, c6, p4, p6, lan_len = LAN
    s_c4, s_c6, s4, s6, srv_len = SERVER
    first_hop = "gateway" if router else "censor"
    links = [Link("client", "eth0", c4, c6, first_hop, "lan0", p4, p6, lan_len)]
    routes: dict[str, tuple[tuple[int, str, str], ...]] = {
        "client": ((4, "default", p4), (6, "default", p6)),
        "server": ((4, "default", s_c4), (6, "default", s_c6)),
    }
    if router:
        g4, g6, k4, k6, tr_len = TRANSIT
        links.append(Link("gateway", "wan0", g4, g6, "censor", "lan0", k4, k6, tr_len))
        routes["gateway"] = ((4, "default", k4), (6, "default", k6))
        routes["censor"] = (
            (4, f"{c4.rsplit('.', 1)[0]}.0/{lan_len}", g4),
            (6, "2001:db8:1::/64", g6),
        )
    links.append(Link("censor", "srv0", s_c4, s_c6, "server", "eth0", s4, s6, srv_len))
    forwarders = ("gateway", "censor") if router else ("censor",)
    return Topology(prefix, router, names, tuple(links), routes, forwarders)


def ns_argv(ns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def caps_argv(caps: Sequence[str] = ("net_admin", "net_raw")) -> list[str]:
    """A ``setpriv`` prefix that runs a command holding only ``caps`` (still uid 0):
    what the systemd unit in scripts/ grants govpass."""
    keep = "-all," + ",".join(f"+{c}" for c in caps)
    return [
        "setpriv",
        f"--bounding-set={keep}",
        f"--inh-caps={keep}",
        f"--ambient-caps={keep}",
        "--",
    ]


def run(
    argv: Sequence[str], *, check: bool = True, timeout: float = 30.0, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output; raise :class:`LabError` with stderr on failure."""
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
    except FileNotFoundError as exc:
        raise LabError(f"command not found: {argv[0]}") from exc
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def netns_list() -> list[str]:
    out = run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(ns: str) -> list[int]:
    proc = run(["ip", "netns", "pids", ns], check=False)
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


# `ip netns exec NS` bind-mounts the files of /etc/netns/NS over those of /etc.
NETNS_ETC = Path("/etc/netns")
LOCAL_DNS = "# govpass lab: DNS stays on loopback (nothing listens: lookups fail at once)\n"
LOCAL_DNS += "nameserver 127.0.0.1\n"


def write_etc(ns: str, hosts: Mapping[str, str] | None = None) -> None:
    """resolv.conf and hosts of a lab namespace: no DNS query leaves it (a lookup
    not in ``hosts`` fails at once); ``hosts`` maps names to addresses."""
    d = NETNS_ETC / ns
    d.mkdir(parents=True, exist_ok=True)
    (d / "resolv.conf").write_text(LOCAL_DNS)
    lines = ["127.0.0.1 localhost", "::1 localhost"]
    lines += [f"{addr} {name}" for name, addr in (hosts or {}).items()]
    (d / "hosts").write_text("\n".join(lines) + "\n")


def build(topo: Topology) -> list[str]:
    """Create namespaces, links, addresses and routes. Returns notes (e.g. ethtool gaps).

    On failure the caller must still call :func:`destroy`: whatever was made is named
    after ``topo.prefix`` and nothing else.
    """
    notes: list[str] = []
    for ns in topo.namespaces.values():
        run(["ip", "netns", "add", ns])
        write_etc(ns)
    for ns in topo.namespaces.values():
        run(ns_argv(ns, ["ip", "link", "set", "lo", "up"]))
        # No duplicate address detection on links made later (link-local addresses
        # included): a tentative address stalls the first IPv6 packets for about a second.
        for conf in ("all", "default"):
            run(ns_argv(ns, ["sysctl", "-qw", f"net.ipv6.conf.{conf}.accept_dad=0"]))
    has_ethtool = shutil.which("ethtool") is not None
    if not has_ethtool:
        notes.append("ethtool missing: veth offloads stay on, capture sizes may be merged")
    for lk in topo.links:
        a, b = topo.ns(lk.a_role), topo.ns(lk.b_role)
        run(
            [
                "ip",
                "link",
                "add",
                lk.a_if,
                "netns",
                a,
                "type",
                "veth",
                "peer",
                "name",
                lk.b_if,
                "netns",
                b,
            ]
        )
        for (
            ns,
            ifname,
            v4,
            v6,
        ) in ((a, lk.a_if, lk.a_v4, lk.a_v6), (b, lk.b_if, lk.b_v4, lk.b_v6)):
            run(ns_argv(ns, ["ip", "addr", "add", f"{v4}/{lk.v4_prefix}", "dev", ifname]))
            # nodad: the address is usable at once instead of after ~1 s of DAD.
            run(
                ns_argv(
                    ns, ["ip", "-6", "addr", "add", f"{v6}/{lk.v6_prefix}", "dev", ifname, "nodad"]
                )
            )
            if has_ethtool:
                # Segment sizes and checksums on the wire must be the real ones: no TSO/GSO
                # super-packets, no GRO merging at the receiver, no offloaded checksums.
                proc = run(
                    ns_argv(
                        ns,
                        [
                            "ethtool",
                            "-K",
                            ifname,
                            "gro",
                            "off",
                            "gso",
                            "off",
                            "tso",
                            "off",
                            "tx",
                            "off",
                        ],
                    ),
                    check=False,
                )
                if proc.returncode != 0:
                    notes.append(f"ethtool on {ns}/{ifname}: {proc.stderr.strip()}")
            run(ns_argv(ns, ["ip", "link", "set", ifname, "up"]))
    for role in topo.forwarders:
        ns = topo.ns(role)
        run(ns_argv(ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]))
        run(ns_argv(ns, ["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]))
    for role, routes in topo.routes.items():
        for family, dest, via in routes:
            run(ns_argv(topo.ns(role), ["ip", f"-{family}", "route", "add", dest, "via", via]))
    wait_for(lambda: ipv6_ready(topo), 5.0, "IPv6 neighbour discovery to be ready", step=0.05)
    return notes


def ipv6_ready(topo: Topology) -> bool:
    """True once every lab interface is operationally up with no tentative address.

    Carrier changes reach IPv6 through the kernel's linkwatch, which batches them up to a
    second apart. Until then the addresses stay tentative (even with ``nodad``) and
    neighbour solicitations for them go unanswered, so the first IPv6 connection would
    stall for a whole retransmit interval.
    """
    for role, ns in topo.namespaces.items():
        links = run(ns_argv(ns, ["ip", "-br", "link", "show"])).stdout.split("\n")
        states = {ln.split()[0].split("@")[0]: ln.split()[1] for ln in links if ln.strip()}
        if any(states.get(ifname) != "UP" for ifname in topo.interfaces(role)):
            return False
        if run(ns_argv(ns, ["ip", "-6", "addr", "show", "tentative"])).stdout.strip():
            return False
    return True


def destroy(topo: Topology) -> list[str]:
    """Kill whatever still runs in the lab's namespaces, then delete them. Returns problems."""
    problems: list[str] = []
    existing = set(netns_list())
    for ns in topo.namespaces.values():
        if ns not in existing:
            continue
        for pid in netns_pids(ns):
            # Only processes inside our own namespaces: they were started by this lab.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc = run(["ip", "netns", "del", ns], check=False)
        if proc.returncode != 0:
            problems.append(f"ip netns del {ns}: {proc.stderr.strip()}")
    for ns in topo.namespaces.values():
        shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
    left = [ns for ns in netns_list() if ns in topo.namespaces.values()]
    if left:
        problems.append(f"namespaces left: {left}")
    return problems


@dataclass
class Spawned:
    role: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class Processes:
    """Background processes started in lab namespaces, each in its own process group."""

    procs: dict[int, Spawned] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spawn(
        self,
        role: str,
        ns: str,
        argv: Sequence[str],
        log: Path,
        env: Mapping[str, str] | None = None,
    ) -> Spawned:
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                ns_argv(ns, argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
                start_new_session=True,
            )
        sp = Spawned(role, list(argv), popen, log)
        with self.lock:
            self.procs[popen.pid] = sp
        return sp

    def kill(self, pid: int, grace: float = 2.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal the process group, SIGKILL after ``grace`` seconds; returns the exit code."""
        with self.lock:
            sp = self.procs.pop(pid, None)
        if sp is None:
            return None
        return stop_group(sp.popen, grace, sig)

    def kill_all(self, grace: float = 2.0) -> None:
        with self.lock:
            pids = list(self.procs)
        for pid in pids:
            self.kill(pid, grace)

    def alive(self) -> list[int]:
        with self.lock:
            return [pid for pid, sp in self.procs.items() if sp.popen.poll() is None]


def stop_group(
    popen: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float, sig: int = signal.SIGTERM
) -> int:
    """Signal a process started with ``start_new_session`` and its group; reap it."""
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=grace)
    # Children that left the group leader behind (or a leader that ignored SIGTERM).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGKILL)
    return popen.wait()


def wait_for(
    predicate: Callable[[], object], timeout: float, what: str, step: float = 0.02
) -> None:
    """Poll ``predicate()`` until true; raise :class:`LabError` naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise LabError(f"timed out after {timeout}s waiting for {what}")


@contextlib.contextmanager
def topology(prefix: str, router: bool = False) -> Iterator[Topology]:
    """Build a topology and guarantee its removal, whatever happens inside."""
    topo = plan(prefix, router)
    try:
        build(topo)
        yield topo
    finally:
        destroy(topo)
