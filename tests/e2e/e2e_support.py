"""Shared pieces of the govpass end-to-end tests (network namespaces, root only).

Every test here runs govpass for real: the daemon (``python -m govpass run``) inside a
lab namespace, real TLS clients, a real censor. Without root the tests fail with one
clear message; they never skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

try:
    import govpass.lab
except ModuleNotFoundError as exc:  # running from a source tree without an install
    if exc.name != "govpass":
        raise
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))

import govpass
from govpass.lab import FlowReport, Lab
from govpass.lab.clients import kinds_available

BLOCKED, ALLOWED = "blocked.example", "allowed.example"
NAMES = (BLOCKED, ALLOWED)
FAMILIES = (4, 6)
BLOCKED_TIMEOUT = 3.0  # a censored client gives up after this long
PASS_TIMEOUT = 10.0  # generous: parallel Chromium runs share two CPUs
HERE = Path(__file__).resolve().parent
PACKAGE_ROOT = Path(govpass.__file__).resolve().parents[1]
# Rules govpass leaves in its own chains; any of these names in a dump is a leftover.
GOVPASS_MARKERS = ("GOVPASS", "govpass")


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "govpass end-to-end tests need root (network namespaces, NFQUEUE, iptables, "
            "tcpdump); run them as root, e.g. in CI or with sudo",
            pytrace=False,
        )


@pytest.fixture(scope="session", autouse=True)
def _root() -> None:
    require_root()


@pytest.fixture(scope="session")
def kinds() -> list[str]:
    """Client kinds installed here. Chromium is in whenever ci/lab-deps.sh installed it."""
    return kinds_available()


def make_lab(router: bool = False) -> Lab:
    lab = Lab(router=router)
    lab.start()
    return lab


@contextlib.contextmanager
def serving_lab(router: bool = False) -> Iterator[Lab]:
    """A lab with the Python TLS server for both names; on exit it must leave
    nothing behind."""
    lab = make_lab(router=router)
    try:
        lab.start_server(names=list(NAMES))
        yield lab
    finally:
        problems = lab.close()
    assert problems == [] and lab.leftovers() == [], (problems, lab.leftovers())


@pytest.fixture(scope="session")
def host_lab() -> Iterator[Lab]:
    """client — censor — server with the lab's Python TLS server for both names."""
    with serving_lab() as lab:
        yield lab


@pytest.fixture(scope="module")
def router_lab() -> Iterator[Lab]:
    """client — gateway — censor — server, with the Python TLS server for both names
    (one per test module: router tests change the gateway)."""
    with serving_lab(router=True) as lab:
        yield lab


@contextlib.contextmanager
def censoring(
    lab: Lab,
    kind: str,
    names: Sequence[str] = (BLOCKED,),
    also: Sequence[tuple[str, Sequence[str]]] = (),
) -> Iterator[None]:
    lab.start_censor(kind, names=list(names), also=also)
    try:
        yield
    finally:
        lab.stop_censor()


Job = tuple[str, str, int]  # (client kind, server name, family)


# Chromium instances are heavy: more than two at once on a small CI machine starve the
# daemon's worker of CPU, which then fails open on the collect timeout.
_CHROMIUM_SLOTS = threading.BoundedSemaphore(2)


def run_matrix(
    lab: Lab, jobs: Sequence[Job], timeout: float, role: str = "client"
) -> dict[Job, tuple[bool, str]]:
    """Run client jobs in parallel; results by job."""
    if not jobs:
        return {}

    def one(job: Job) -> tuple[bool, str]:
        if job[0] != "chromium":
            return lab.client(*job, timeout=timeout, role=role)
        with _CHROMIUM_SLOTS:
            return lab.client(*job, timeout=timeout, role=role)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return dict(zip(jobs, pool.map(one, jobs), strict=True))


def first_packet_lacked_sni(decisions: list[dict[str, Any]], family: int) -> bool:
    """Whether the firstpacket censor let an IPv``family`` flow through because its first
    payload packet did not hold the whole SNI (Chromium's ~2 KB hello, unsplit, puts the
    name in the second segment about half the time)."""
    return any(
        d["family"] == family
        and d["sni"] is None
        and d["verdict"] == "allow"
        and str(d["reason"]).startswith("truncated")
        for d in decisions
    )


def assert_blocked(lab: Lab, censor: str, results: dict[Job, tuple[bool, str]]) -> None:
    """Every job failed — except Chromium where an unsplit hello can miss the censor by
    itself (string: name straddles the boundary; firstpacket: name in segment 2)."""
    passed = {job: res for job, res in results.items() if res[0]}
    for job in [j for j in passed if j[0] == "chromium"]:
        if censor == "string":
            if not lab.client(*job, timeout=BLOCKED_TIMEOUT)[0]:
                del passed[job]
        elif first_packet_lacked_sni(lab.censor_decisions(), job[2]):
            del passed[job]
    assert not passed, f"passed the {censor} censor: {passed}"


# -- the daemon ---------------------------------------------------------------------------


def cli_argv(run_dir: Path | None, args: Sequence[str]) -> list[str]:
    # COLUMNS: a fixed width, so how messages come out does not depend on the caller's tty.
    env = [f"PYTHONPATH={PACKAGE_ROOT}", "COLUMNS=80"]
    if run_dir is not None:
        env.append(f"GOVPASS_RUN_DIR={run_dir}")
    return ["env", *env, sys.executable, "-m", "govpass", *args]


def govpass_cli(
    lab: Lab, role: str, args: Sequence[str], run_dir: Path | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``python -m govpass ARGS`` inside ``role``'s namespace, to completion."""
    return lab.exec(role, cli_argv(run_dir, args), check=False, timeout=timeout)


def firewall_dump(lab: Lab, role: str) -> str:
    """Every place govpass could leave rules in: iptables (all flavours) and nft."""
    out = []
    for tool in (
        "iptables-save",
        "ip6tables-save",
        "iptables-legacy-save",
        "ip6tables-legacy-save",
        "iptables-nft-save",
        "ip6tables-nft-save",
    ):
        proc = lab.exec(
            role, ["sh", "-c", f"command -v {tool} >/dev/null && {tool} || true"], check=False
        )
        out.append(f"## {tool}\n{proc.stdout}")
    nft = lab.exec(
        role, ["sh", "-c", "command -v nft >/dev/null && nft list ruleset || true"], check=False
    )
    out.append(f"## nft\n{nft.stdout}")
    return "\n".join(out)


def govpass_rule_lines(lab: Lab, role: str) -> list[str]:
    return [
        ln for ln in firewall_dump(lab, role).splitlines() if any(m in ln for m in GOVPASS_MARKERS)
    ]


def mangle_rules(lab: Lab, role: str, tool: str = "iptables-save") -> list[str]:
    """The govpass lines (chains and rules) in one family's mangle table."""
    text = lab.exec(role, [tool, "-t", "mangle"]).stdout
    return [ln for ln in text.splitlines() if "GOVPASS" in ln]


def queue_table_of(lab: Lab) -> dict[int, str]:
    """Bound queues in the client namespace (queue number -> the /proc line)."""
    text = lab.exec("client", ["cat", "/proc/net/netfilter/nfnetlink_queue"]).stdout
    return {int(ln.split()[0]): ln for ln in text.splitlines() if ln.strip()}


def _same_program(pid: int, parent: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/exe") == os.readlink(f"/proc/{parent}/exe")
    except OSError:
        return False  # gone already


class Govpass:
    """One ``govpass run`` in a lab namespace, with its own run directory."""

    def __init__(
        self,
        lab: Lab,
        role: str,
        args: Sequence[str],
        name: str = "gp",
        launcher: Sequence[str] = ("-m", "govpass"),
        *,
        wrapper: Sequence[str] = (),
        run_dir: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.lab = lab
        self.env = dict(env or {})  # more environment for the daemon
        self.launcher = list(launcher)  # python arguments before the subcommand
        self.role = role
        self.args = ["run", "--workers", "1", "--stats-interval", "0.5", *args]
        # Runs the interpreter, e.g. setpriv as another user (its arguments end in "--").
        self.wrapper = list(wrapper)
        self.run_dir = run_dir or lab.workdir / f"run-{name}-{time.monotonic_ns()}"
        self.pid: int | None = None
        self.log_path: Path | None = None
        self.returncode: int | None = None

    def start(self, timeout: float = 20.0) -> Govpass:
        env = {**self.env, "GOVPASS_RUN_DIR": str(self.run_dir)}
        if self.wrapper:
            env["PYTHONPATH"] = str(PACKAGE_ROOT)
            argv = [*self.wrapper, sys.executable, *self.launcher, *self.args]
            self.pid = self.lab.spawn(self.role, argv, env=env)
        else:
            argv = [*self.launcher, *self.args]
            self.pid = self.lab.spawn(self.role, argv, python=True, env=env)
        self.log_path = self.lab.log_of(self.pid)
        deadline = time.monotonic() + timeout
        while "running:" not in self.log():
            if self.popen().poll() is not None:
                pytest.fail(f"govpass {' '.join(self.args)} exited: {self.log()}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"govpass did not start within {timeout}s: {self.log()}", pytrace=False)
            time.sleep(0.05)
        return self

    def popen(self) -> subprocess.Popen[bytes]:
        assert self.pid is not None
        return self.lab.procs.procs[self.pid].popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def workers(self) -> list[int]:
        """Pids of the daemon's worker processes: its children that run its program
        (not the iptables-save or nft it runs now and then to read rule counters)."""
        assert self.pid is not None
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        with contextlib.suppress(OSError):
            children = [int(p) for p in path.read_text().split()]
            return [pid for pid in children if _same_program(pid, self.pid)]
        return []

    def stats(self) -> dict[str, Any]:
        proc = govpass_cli(self.lab, self.role, ["stats", "--json"], self.run_dir)
        assert proc.returncode == 0, proc.stderr
        data: dict[str, Any] = json.loads(proc.stdout)
        return data

    def wait_stats(
        self, ready: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """Poll ``stats --json`` until ``ready(stats)``; the workers write every 0.25 s."""
        deadline = time.monotonic() + timeout
        while True:
            data = self.stats()
            if ready(data) or time.monotonic() > deadline:
                return data
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0, *, group: bool = False) -> int:
        """Signal the daemon process only (like ``kill PID``), or with ``group`` its whole
        process group (Ctrl-C on a terminal, systemd's stop), and wait for it to exit."""
        if self.pid is None or self.returncode is not None:
            return self.returncode if self.returncode is not None else 0
        popen = self.popen()
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.pid, sig)  # the lab starts it in a session of its own
            else:
                os.kill(self.pid, sig)
        try:
            self.returncode = popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"govpass did not exit within {timeout}s of signal {sig}: {self.log()}",
                pytrace=False,
            )
        self.lab.kill(self.pid)  # reap; kills anything left in its process group
        return self.returncode

    def kill_group(self) -> None:
        """SIGKILL the daemon and its workers at once (a crash, or an OOM kill of all)."""
        assert self.pid is not None
        self.lab.procs.kill(self.pid, grace=2.0, sig=signal.SIGKILL)
        self.returncode = -signal.SIGKILL


def all_splits(stats: dict[str, Any]) -> int:
    """Hellos split by the workers plus those split in the kernel (kernel split)."""
    return int(stats.get("splits", 0)) + int(stats.get("kernel_split", 0))


# The worker path for every hello: tests of NFQUEUE itself (queue, verdicts, loops).
WORKERS_ONLY = ("--kernel-split", "off")


@contextlib.contextmanager
def running(
    lab: Lab, args: Sequence[str] = (), role: str = "client", name: str = "gp"
) -> Iterator[Govpass]:
    """A daemon for the ``with`` block; on exit it must stop cleanly and leave no rules."""
    lab.close_connections(role)  # an earlier test's retransmitting hellos are not ours
    gp = Govpass(lab, role, args, name).start()
    try:
        yield gp
    except BaseException:
        gp.stop()
        raise
    rc = gp.stop()
    assert rc == 0, f"govpass exited {rc} on SIGTERM: {gp.log()[-2000:]}"
    assert "rules removed" in gp.log(), gp.log()[-2000:]
    left = govpass_rule_lines(lab, role)
    assert not left, f"govpass rules left after SIGTERM: {left}"


# -- the kernel split's program ---------------------------------------------------------

# BPF_PROG_QUERY on an interface's tcx egress hook, then each program's name
# (BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD): run in the namespace to ask.
_TCX_QUERY = r"""
import ctypes, json, os, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
NR = {"x86_64": 321, "aarch64": 280, "riscv64": 280}[os.uname().machine]
def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 160)
    fd = libc.syscall(NR, cmd, buf, 160)
    if fd < 0:
        raise OSError(ctypes.get_errno(), f"bpf command {cmd}")
    return fd, buf.raw
ids = (ctypes.c_uint32 * 64)()
query = struct.pack("=IIIIQI", socket.if_nametoindex(sys.argv[1]), 47, 0, 0,
                    ctypes.addressof(ids), 64)  # BPF_TCX_EGRESS
count = struct.unpack_from("=I", bpf(16, query)[1], 24)[0]
names = []
for prog_id in ids[:count]:
    fd = bpf(13, struct.pack("=I", prog_id))[0]
    info = ctypes.create_string_buffer(256)
    bpf(15, struct.pack("=IIQ", fd, 256, ctypes.addressof(info)))
    names.append(info.raw[64:80].split(b"\0")[0].decode())
    os.close(fd)
print(json.dumps(names))
"""


def tcx_egress_programs(lab: Lab, role: str, iface: str) -> list[str]:
    """Names of the programs attached to ``iface``'s tcx egress hook, per the kernel."""
    proc = lab.exec(role, [sys.executable, "-c", _TCX_QUERY, iface], check=False)
    assert proc.returncode == 0, f"tcx query on {role}/{iface}: {proc.stderr}"
    names: list[str] = json.loads(proc.stdout)
    return names


# -- wire checks ----------------------------------------------------------------------------


def hello_flows(flows: list[FlowReport]) -> list[FlowReport]:
    """Connections opened during the capture whose first record was seen whole."""
    return [f for f in flows if f.syn_seen and f.complete]


def by_port(flows: list[FlowReport]) -> dict[tuple[int, int], FlowReport]:
    return {(f.family, f.sport): f for f in flows}


def sni_offset(record: bytes, name: str) -> int:
    """Offset of the host name in the record (it occurs exactly once in a ClientHello)."""
    raw = name.encode()
    assert record.count(raw) == 1, f"{name} occurs {record.count(raw)} times in the record"
    return record.index(raw)


def boundaries(flow: FlowReport) -> list[int]:
    """Offsets in the record where one segment ends and the next begins."""
    return [s.rel_seq for s in flow.segments[1:]]


def netprobe(
    lab: Lab, args: Sequence[str], role: str = "client", timeout: float = 30.0
) -> dict[str, Any]:
    """Run tests/e2e/netprobe.py in a namespace; its one JSON line."""
    proc = lab.exec(
        role, [sys.executable, str(HERE / "netprobe.py"), *args], check=False, timeout=timeout
    )
    assert proc.returncode == 0, f"netprobe {args}: {proc.stderr[-2000:]}"
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out
