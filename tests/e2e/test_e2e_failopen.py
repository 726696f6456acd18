"""Fail-open, bulk traffic, clean-up and errors of the daemon (host mode).

The server here is ``mixed_server.py`` on port 443: TLS like the lab's own server plus
bulk endpoints, and a raw echo for anything that is not a ClientHello, so a test can
see the exact bytes the server received.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from e2e_support import (
    ALLOWED,
    BLOCKED,
    FAMILIES,
    HERE,
    NAMES,
    PASS_TIMEOUT,
    WORKERS_ONLY,
    Govpass,
    all_splits,
    cli_argv,
    govpass_cli,
    govpass_rule_lines,
    hello_flows,
    make_lab,
    mangle_rules,
    netprobe,
    run_matrix,
    running,
)
from govpass.lab import Lab
from govpass.lab.netns import wait_for
from govpass.lab.server import make_cert

pytestmark = pytest.mark.netns

MB = 1024 * 1024


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    the_lab = make_lab()
    try:
        ips = [the_lab.address("server", 4), the_lab.address("server", 6)]
        cert, key = make_cert(the_lab.workdir, list(NAMES), ips)
        the_lab.cafile = cert  # lab.client() checks the chain against it
        log = mixed_log(the_lab)
        pid = the_lab.spawn(
            "server",
            [str(HERE / "mixed_server.py"), "--cert", str(cert), "--key", str(key),
             "--log", str(log)],
            python=True,
        )  # fmt: skip

        def ready() -> bool:
            if pid not in the_lab.alive():
                raise AssertionError(the_lab.log_of(pid).read_text())
            return log.exists() and '"ready"' in log.read_text()

        wait_for(ready, 10.0, "the mixed server")
        yield the_lab
    finally:
        problems = the_lab.close()
    assert problems == [] and the_lab.leftovers() == []


def mixed_log(lab: Lab) -> Path:
    return lab.workdir / "mixed.jsonl"


def server_records(lab: Lab) -> list[dict[str, object]]:
    text = mixed_log(lab).read_text()
    return [r for r in map(json.loads, text.splitlines()) if "event" not in r]


def curl(lab: Lab, family: int, path: str, *extra: str) -> tuple[int, str]:
    """curl https://blocked.example<path> from the client; (exit code, stdout)."""
    addr = lab.address("server", family)
    host = f"[{addr}]" if family == 6 else addr
    argv = ["curl", "-sS", "--max-time", "30", "--resolve", f"{BLOCKED}:443:{host}",
            "--cacert", str(lab.cafile), "--http1.1", "-H", "Expect:", *extra,
            f"https://{BLOCKED}{path}"]  # fmt: skip
    proc = lab.exec("client", argv, check=False, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr


def costs(gp: Govpass, actions: list[Callable[[], None]]) -> list[dict[str, int]]:
    """Counters the daemon spent on each action (one connection each)."""
    out = []
    before = gp.stats()
    for action in actions:
        action()
        # The worker writes its counters every 0.25 s: wait for late packets to show.
        time.sleep(0.8)
        after = gp.wait_stats(lambda s, b=before: s["splits"] > b["splits"])
        out.append({k: after[k] - before[k] for k in ("packets", "splits", "segments")})
        before = after
    return out


@pytest.fixture(scope="class")
def gp(lab: Lab) -> Iterator[Govpass]:
    # The queue's costs: every hello takes the worker path.
    with running(lab, WORKERS_ONLY, name="failopen") as daemon:
        yield daemon


class TestPassThrough:
    @pytest.mark.parametrize("family", FAMILIES)
    def test_bulk_transfer_queues_no_extra_packets(
        self, lab: Lab, gp: Govpass, family: int
    ) -> None:
        size = 4 * MB
        small: list[str] = []
        down: list[str] = []
        up: list[str] = []

        def get(n: int, out: list[str]) -> None:
            rc, text = curl(lab, family, f"/bytes/{n}", "-o", "/dev/null", "-w",
                            "%{http_code} %{size_download}")  # fmt: skip
            out.append(f"{rc} {text}")

        blob = lab.workdir / "upload.bin"
        blob.write_bytes(os.urandom(size))

        def post() -> None:
            rc, text = curl(lab, family, "/sink", "--data-binary", f"@{blob}", "-H",
                            "Content-Type: application/octet-stream")  # fmt: skip
            up.append(f"{rc} {text}")

        cost_small, cost_down, cost_up = costs(
            gp, [lambda: get(1000, small), lambda: get(size, down), post]
        )
        assert small == ["0 200 1000"] and down == [f"0 200 {size}"], (small, down)
        assert up == [f"0 received={size}\n"], up
        # One ClientHello each; the megabytes after it never reach the queue.
        for what, cost in (("small", cost_small), ("download", cost_down), ("upload", cost_up)):
            assert cost["splits"] == 1 and cost["packets"] <= 2, (what, cost)
        assert cost_down["packets"] == cost_small["packets"], (cost_small, cost_down)
        assert cost_up["packets"] == cost_small["packets"], (cost_small, cost_up)

    @pytest.mark.parametrize("family", FAMILIES)
    def test_non_tls_bytes_pass_unchanged(self, lab: Lab, gp: Govpass, family: int) -> None:
        rng = random.Random(4430 + family)
        junk = bytes(rng.getrandbits(8) for _ in range(3000))
        payloads = {
            "plain http": b"GET / HTTP/1.1\r\nHost: blocked.example\r\n\r\n",
            "random bytes": bytes([junk[0] | 0x80]) + junk[1:],  # never 0x16
            # Looks like a ClientHello to the kernel filter (16 03 .. .. .. 01), so the
            # engine sees it; the body is garbage. (Today the engine cuts it at byte 5
            # like a hello: only segment boundaries, the bytes stay the same.)
            "hello-shaped garbage": bytes.fromhex("160301004001") + junk[:63],
        }
        addr = lab.address("server", family)
        before = gp.wait_stats(lambda s: True)
        for what, payload in payloads.items():
            out = netprobe(lab, ["raw", addr, "443", payload.hex()])
            assert bytes.fromhex(out["echo"]) == payload, (what, out)
        # A record whose header promises 12 KB that never come: held for the collect
        # timeout, then released as it was. No FIN, so only the timer can release it.
        partial = bytes.fromhex("160301300001") + junk[:300]
        started = time.monotonic()
        out = netprobe(lab, ["raw", addr, "443", partial.hex(), "--no-fin"])
        assert bytes.fromhex(out["echo"]) == partial, out
        assert time.monotonic() - started < 5
        received = [bytes.fromhex(str(r["received"])) for r in server_records(lab)
                    if r.get("mode") == "raw"]  # fmt: skip
        for payload in [*payloads.values(), partial]:
            assert payload in received, "the server did not get the exact bytes"
        after = gp.wait_stats(lambda s: s["fail_open"]["timeout"] > before["fail_open"]["timeout"])
        fails = {k: n - before["fail_open"][k] for k, n in after["fail_open"].items()}
        assert fails["timeout"] == 1, fails
        assert after["packets"] > before["packets"], "the hello-shaped bytes were never queued"
        assert after["inject_errors"] == before["inject_errors"]


# -- crashes and clean-up ------------------------------------------------------------------------


def traffic(lab: Lab, stop: threading.Event, results: list[tuple[bool, str]]) -> None:
    i = 0
    while not stop.is_set():
        results.append(lab.client("curl", NAMES[i % 2], FAMILIES[i % 2], timeout=PASS_TIMEOUT))
        i += 1


def check_unsplit_and_working(lab: Lab, kinds: list[str]) -> None:
    """With rules left but nobody on the queue, --queue-bypass lets hellos pass whole."""
    quick = [k for k in kinds if k != "chromium"]
    with lab.capture("client") as cap:
        results = run_matrix(lab, [(k, n, f) for k in quick for n in NAMES for f in FAMILIES],
                             PASS_TIMEOUT)  # fmt: skip
    failed = {job: res for job, res in results.items() if not res[0]}
    assert not failed, f"connections failed after the daemon died: {failed}"
    flows = hello_flows(cap.flows())
    assert len(flows) == len(results)
    for flow in flows:
        assert flow.sizes == [flow.record_len], flow.summary()


def test_sigkill_during_traffic_fails_open(lab: Lab, kinds: list[str]) -> None:
    gp = Govpass(lab, "client", [], name="sigkill").start()
    stop, results = threading.Event(), []
    thread = threading.Thread(target=traffic, args=(lab, stop, results))
    thread.start()
    try:
        wait_for(lambda: len(results) >= 6, 20.0, "traffic through the daemon")
        gp.kill_group()  # daemon and workers, all at once
        count_at_kill = len(results)
        wait_for(lambda: len(results) >= count_at_kill + 6, 30.0, "traffic after the kill")
    finally:
        stop.set()
        thread.join(30)
    failed = [r for r in results if not r[0]]
    assert not failed, f"{len(failed)} of {len(results)} connections failed: {failed}"
    assert mangle_rules(lab, "client") and mangle_rules(lab, "client", "ip6tables-save"), (
        "the rules should outlive a SIGKILL"
    )
    check_unsplit_and_working(lab, kinds)
    proc = govpass_cli(lab, "client", ["rules", "remove"])
    assert proc.returncode == 0 and proc.stdout.startswith("removed:"), proc
    assert govpass_rule_lines(lab, "client") == []
    proc = govpass_cli(lab, "client", ["rules", "remove"])
    assert proc.returncode == 0 and "nothing installed" in proc.stdout, proc


def test_a_full_queue_accepts_instead_of_dropping(lab: Lab) -> None:
    """The queue's fail-open flag. With the worker stopped, 16 hellos fill its queue
    (their connections wait: the kernel does not retransmit a segment it still
    holds); the hellos of 8 further connections find the queue full and go out
    unmodified, so those connections complete at once and the kernel counts no
    drop. Once the worker runs again, the 16 waiting connections complete too."""
    # The watchdog off: it would replace the stopped worker after a second.
    args = ["--queue-len", "16", "--worker-timeout", "0", *WORKERS_ONLY]
    gp = Govpass(lab, "client", args, name="queuefull").start()
    workers = gp.workers()

    def connect(i: int) -> tuple[bool, str]:
        return lab.client("curl", NAMES[i % 2], FAMILIES[i % 2], timeout=20.0)

    pool = ThreadPoolExecutor(max_workers=24)
    try:
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        waiting = [pool.submit(connect, i) for i in range(16)]
        wait_for(lambda: queue_table_of(lab)[200].split()[2] == "16", 10.0, "a full queue")
        later = list(pool.map(connect, range(16, 24)))
        table = queue_table_of(lab)
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
        held = [f.result(30) for f in waiting]
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        pool.shutdown(wait=True)
        rc = gp.stop()
    assert all(ok for ok, _ in later), later
    assert int(table[200].split()[5]) == 0, table[200]  # queue_dropped
    assert all(ok for ok, _ in held), held
    assert rc == 0, gp.log()
    assert govpass_rule_lines(lab, "client") == []


def test_sigkill_of_daemon_process_then_next_run_cleans(lab: Lab, kinds: list[str]) -> None:
    gp = Govpass(lab, "client", [], name="sigkill-parent").start()
    rules_v4 = mangle_rules(lab, "client")
    rules_v6 = mangle_rules(lab, "client", "ip6tables-save")
    workers = gp.workers()
    assert rules_v4 and rules_v6 and workers
    gp.stop(signal.SIGKILL)  # `kill -9 PID`: the workers are not signalled
    deadline = time.monotonic() + 3
    while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{w}").exists() for w in workers), "workers outlived the daemon"
    assert mangle_rules(lab, "client") == rules_v4  # left behind ...
    check_unsplit_and_working(lab, kinds)  # ... and harmless
    with running(lab, name="after-sigkill") as again:
        # The next run replaced the leftovers instead of adding to them.
        assert mangle_rules(lab, "client") == rules_v4
        assert mangle_rules(lab, "client", "ip6tables-save") == rules_v6
        assert lab.client("curl", BLOCKED, 4, timeout=PASS_TIMEOUT)[0]
        again.wait_stats(lambda s: s["splits"] >= 1)
    assert govpass_rule_lines(lab, "client") == []


def test_sigterm_removes_every_rule(lab: Lab) -> None:
    gp = Govpass(lab, "client", [], name="sigterm").start()
    assert mangle_rules(lab, "client") and mangle_rules(lab, "client", "ip6tables-save")
    workers = gp.workers()
    assert gp.stop(signal.SIGTERM) == 0, gp.log()
    assert "rules removed" in gp.log()
    assert govpass_rule_lines(lab, "client") == []
    assert not any(Path(f"/proc/{w}").exists() for w in workers)
    # A clean stop leaves what it found: no state files, no table iptables-nft made.
    assert sorted(p.name for p in gp.run_dir.glob("*.json")) == []
    assert lab.exec("client", ["nft", "list", "ruleset"]).stdout.strip() == ""
    assert "splits=" in gp.log().splitlines()[-1]  # the last counters, in the log


# What `govpass run &` in a script or under nohup gets: SIGINT ignored, then exec.
SIGINT_IGNORED = (
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.executable, [sys.executable, '-m', 'govpass', *sys.argv[1:]])",
)


def test_sigint_stops_a_daemon_that_inherited_it_ignored(lab: Lab) -> None:
    gp = Govpass(lab, "client", [], name="sigint-ignored", launcher=SIGINT_IGNORED).start()
    assert gp.pid is not None
    sigint = int(Path(f"/proc/{gp.pid}/status").read_text().split("SigIgn:")[1].split()[0], 16)
    assert not sigint & (1 << (signal.SIGINT - 1)), "the daemon left SIGINT ignored"
    assert mangle_rules(lab, "client")
    workers = gp.workers()
    assert gp.stop(signal.SIGINT) == 0, gp.log()
    assert "rules removed" in gp.log()
    assert govpass_rule_lines(lab, "client") == []
    assert not any(Path(f"/proc/{w}").exists() for w in workers)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "systemd-stop"])
def test_a_stop_signal_to_the_whole_group_restarts_no_worker(lab: Lab, sig: int) -> None:
    """Ctrl-C reaches every process of the terminal's foreground group and systemd's stop
    every process of the unit: the workers exit on it at the same moment as the parent,
    which must stop rather than take their exit for a crash and start new ones."""
    for attempt in range(3):  # the race it guards against is a matter of milliseconds
        gp = Govpass(lab, "client", ["--workers", "2"], name=f"group-stop-{attempt}").start()
        workers = gp.workers()
        assert len(workers) == 2, workers
        assert gp.stop(sig, group=True) == 0, gp.log()
        log = gp.log()
        assert "restarting" not in log and "worker_restarts" not in log, log[-2000:]
        assert "rules removed" in log
        assert govpass_rule_lines(lab, "client") == []


def test_rules_install_twice_does_not_duplicate(lab: Lab) -> None:
    args = ["rules", "install", "--workers", "1"]
    first = govpass_cli(lab, "client", args)
    assert first.returncode == 0, first.stderr
    once = (mangle_rules(lab, "client"), mangle_rules(lab, "client", "ip6tables-save"))
    second = govpass_cli(lab, "client", args)
    assert second.returncode == 0, second.stderr
    twice = (mangle_rules(lab, "client"), mangle_rules(lab, "client", "ip6tables-save"))
    assert once == twice and once[0] and once[1]
    assert len(once[0]) == len(set(once[0])), once[0]
    show = govpass_cli(lab, "client", ["rules", "show"])
    assert show.returncode == 0 and "GOVPASS" in show.stdout
    removed = govpass_cli(lab, "client", ["rules", "remove"])
    assert removed.returncode == 0, removed.stderr
    assert govpass_rule_lines(lab, "client") == []


# -- errors ----------------------------------------------------------------------------------


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"expected one line, got {len(lines)}: {stderr!r}"
    return lines[0]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--split-chunk", "abc"], "split-chunk"),
        (["--split-pos", "bogus"], "split-pos"),
        (["--collect-timeout", "-1"], "collect-timeout"),
        (["--mode", "router"], "iface"),  # router mode without --iface
    ],
)
def test_invalid_flag_value_is_one_line(lab: Lab, args: list[str], field: str) -> None:
    proc = govpass_cli(lab, "client", ["run", "--workers", "1", *args], lab.workdir / "bad")
    assert proc.returncode != 0
    line = one_error_line(proc.stderr)
    assert field in line and line.startswith("govpass:"), line
    assert govpass_rule_lines(lab, "client") == []


def test_without_privileges_is_one_line(lab: Lab) -> None:
    """Root without capabilities (an empty bounding set): one line naming what is
    missing, non-zero exit, no rules."""
    argv = cli_argv(lab.workdir / "nocaps", ["run", "--workers", "1"])
    proc = lab.exec(
        "client", ["setpriv", "--bounding-set=-all", "--inh-caps=-all", *argv], check=False
    )
    assert proc.returncode != 0
    line = one_error_line(proc.stderr)
    assert line.startswith("govpass:") and "CAP_NET_RAW" in line, line
    assert govpass_rule_lines(lab, "client") == []


@pytest.mark.parametrize("command", [["rules", "install"], ["run", "--workers", "1"]])
def test_without_iptables_and_nft_is_one_line(lab: Lab, command: list[str]) -> None:
    """No firewall tool in PATH: one error line that says what to install, and
    nothing before it (``run`` asks before it binds a queue), non-zero exit, no
    rules, the queue freed."""
    argv = cli_argv(lab.workdir / "nofw", command)
    proc = lab.exec("client", [argv[0], "PATH=/nonexistent", *argv[1:]], check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("govpass:")]
    assert len(errors) == 1, proc.stderr
    assert "no usable firewall backend" in errors[0] and "nor iptables found in PATH" in errors[0]
    assert "apt-get install iptables" in errors[0]
    assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == errors, proc.stderr
    assert govpass_rule_lines(lab, "client") == []
    assert 200 not in queue_table_of(lab)


def test_a_firewall_that_cannot_work_here_is_the_only_line(lab: Lab) -> None:
    """``--firewall nftables`` where nft has no ``queue`` (this kernel has no
    nft_queue): the one line names the setting and the values it accepts; nothing
    is printed, bound or installed before it."""
    from govpass.rules.detect import probe_nftables
    from govpass.rules.runner import Runner
    from govpass.rules.spec import RuleSpec

    status = probe_nftables(RuleSpec(), Runner(prefix=("ip", "netns", "exec", lab.ns("client"))))
    if status.usable:
        pytest.skip("nftables can queue in this kernel (nft_queue present): nothing to refuse")
    argv = cli_argv(lab.workdir / "nonft", ["run", "--workers", "1", "--firewall", "nftables"])
    proc = lab.exec("client", argv, check=False)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("govpass: firewall nftables cannot carry the rules here"), lines
    assert "accepted: auto" in lines[0] and "nft_queue" in lines[0], lines
    assert govpass_rule_lines(lab, "client") == []
    assert 200 not in queue_table_of(lab)


def netlink_queue_socket(pid: int) -> int:
    """A duplicate, in this process, of worker ``pid``'s NFQUEUE netlink socket
    (pidfd_getfd): options set on it apply to the worker's socket."""
    rows = Path(f"/proc/{pid}/net/netlink").read_text().splitlines()[1:]
    inodes = {int(r.split()[-1]) for r in rows if int(r.split()[1]) == 12}  # NETLINK_NETFILTER
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        if target.startswith("socket:[") and int(target[8:-1]) in inodes:
            pidfd = os.pidfd_open(pid)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                dup = libc.syscall(438, pidfd, int(fd), 0)  # pidfd_getfd
                if dup < 0:
                    raise OSError(ctypes.get_errno(), "pidfd_getfd")
                return int(dup)
            finally:
                os.close(pidfd)
    raise AssertionError(f"no netfilter netlink socket in process {pid}")


def test_a_full_socket_accepts_and_the_worker_goes_on(lab: Lab) -> None:
    """When the worker's netlink socket overflows (here: shrunk to the minimum
    buffer while the worker is stopped), the kernel accepts the hellos it cannot
    deliver (fail-open) instead of dropping them, reports no error to the socket
    (NETLINK_NO_ENOBUFS), and the worker, resumed, goes on splitting."""
    gp = Govpass(lab, "client", ["--worker-timeout", "0"], name="fullsock").start()
    (worker,) = gp.workers()
    sock = socket.socket(fileno=netlink_queue_socket(worker))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's minimum
        before = gp.stats()
        os.kill(worker, signal.SIGSTOP)
        jobs = [("curl", NAMES[i % 2], FAMILIES[i % 2]) for i in range(8)]
        pool = ThreadPoolExecutor(max_workers=len(jobs))
        try:
            futures = [pool.submit(lab.client, *job, timeout=15.0) for job in jobs]
            # Most hellos find the socket full and leave unmodified at once; the
            # one or two it could hold wait for the worker.
            wait_for(lambda: sum(f.done() for f in futures) >= len(jobs) - 2, 10.0, "fail-open")
            passed_while_stopped = sum(f.done() and f.result()[0] for f in futures)
            table = queue_table_of(lab)
        finally:
            os.kill(worker, signal.SIGCONT)
            results = [f.result(30) for f in futures]
            pool.shutdown()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        assert passed_while_stopped >= len(jobs) - 2, results
        assert all(ok for ok, _ in results), results
        assert int(table[200].split()[6]) == 0, table[200]  # user_dropped
        ok, detail = lab.client("curl", BLOCKED, 4, timeout=PASS_TIMEOUT)
        assert ok, detail
        after = gp.wait_stats(lambda s: s["splits"] > before["splits"])
        assert after.get("verdict_errors", 0) == 0, after
    finally:
        sock.close()
        rc = gp.stop()
    assert rc == 0, gp.log()
    assert govpass_rule_lines(lab, "client") == []


def queue_table_of(lab: Lab) -> dict[int, str]:
    """Bound queues in the client namespace (queue number -> the /proc line)."""
    text = lab.exec("client", ["cat", "/proc/net/netfilter/nfnetlink_queue"]).stdout
    return {int(ln.split()[0]): ln for ln in text.splitlines() if ln.strip()}


def test_second_daemon_on_same_queue(lab: Lab) -> None:
    with running(lab, name="first") as first:
        rules = mangle_rules(lab, "client")
        proc = govpass_cli(lab, "client", ["run", "--workers", "1"], lab.workdir / "second")
        assert proc.returncode != 0
        assert "Traceback" not in proc.stderr, proc.stderr
        assert "already running in this network namespace" in " ".join(proc.stderr.split())
        # The first daemon is untouched: its rules, its queue, its counters.
        assert mangle_rules(lab, "client") == rules
        assert lab.client("curl", ALLOWED, 6, timeout=PASS_TIMEOUT)[0]
        first.wait_stats(lambda s: all_splits(s) >= 1)
        assert all_splits(first.stats()) >= 1


BIND_QUEUE = """
import time
from govpass.backends.nfqueue import NfqueueWorker
from govpass.config import load
config = load(env={})
worker = NfqueueWorker(200, config.engine_config(), config.mark, config.queue_len, True)
worker.bind()
print("bound", flush=True)
time.sleep(60)
"""


def test_already_bound_error_is_one_line(lab: Lab) -> None:
    """The queue is taken by another program (not a govpass daemon, e.g. nfqws)."""
    pid = lab.spawn("client", ["-c", BIND_QUEUE], python=True)
    try:
        wait_for(lambda: "bound" in lab.log_of(pid).read_text(), 10.0, "the queue bound")
        proc = govpass_cli(lab, "client", ["run", "--workers", "1"], lab.workdir / "second-1l")
    finally:
        lab.kill(pid)
    assert proc.returncode != 0
    assert "already bound" in one_error_line(proc.stderr)
    assert mangle_rules(lab, "client") == []


def test_second_daemon_in_same_run_dir_leaves_first_reachable(lab: Lab) -> None:
    with running(lab, name="first-rundir") as first:
        proc = govpass_cli(lab, "client", ["run", "--workers", "1"], first.run_dir)
        assert proc.returncode != 0
        assert "already running" in one_error_line(proc.stderr)
        stats = govpass_cli(lab, "client", ["stats", "--json"], first.run_dir)
        assert stats.returncode == 0, stats.stderr
