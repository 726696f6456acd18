#!/usr/bin/env python3
"""Lab benchmark: govpass against no splitter, in one run, in the netns lab (root only).

    sudo python3 ci/bench_lab.py                 # 8 rounds (ABBA), about 2 min
    sudo python3 ci/bench_lab.py --rounds 6 --duration 10 --workers 1 --json out.json
    sudo python3 ci/bench_lab.py --no-write      # do not touch BENCHMARKS.md

Topology: ``client — censor — server`` (:class:`govpass.lab.Lab`, direct mode). The
censor only forwards; the server is nginx (TLS 1.2/1.3, self-signed P-256 certificate,
one worker by default) serving ``/`` (a 3-byte body), ``/big.bin`` (64 MB) and ``/up``
(accepts and discards a request body). govpass runs in the client namespace in host
mode, started fresh for every "with" round (``python -m govpass run --workers N
--stats-interval 0.5``) and stopped before the next "without" round.

Rounds alternate in ABBA order (without, with | with, without | ...); each runs:

1. handshakes  ``--handshakes`` sequential fresh TCP+TLS 1.3 handshakes from Python
               (ci/bench_lab_hs.py): connect() start → handshake done, p50/p99;
2. bulk        ``--bulk-reps`` downloads and uploads of ``--bulk-mb`` MB, each on ONE TLS
               connection (curl), the best of each kept; every upload is checked
               against the server's interface rx bytes;
3. conn/s      ``wrk -t1 -c16 -d<duration>s -H "Connection: close"``: every request on a
               new TCP+TLS connection; govpass CPU (utime+stime of the daemon and its
               workers from /proc) is sampled around this phase only.

The connections made while govpass ran are counted from the client namespace's
``Tcp: ActiveOpens`` (/proc/net/snmp); govpass's own counters come from
``govpass stats --json`` (``packets`` queued, ``splits``, kernel ``queue_dropped`` and
``user_dropped``). Results: a table and a JSON summary on stdout, and the ``## Lab``
section of BENCHMARKS.md (only that section is replaced). Exit status: 0 when the
benchmark ran (goals met or not), 1 when it could not measure, 2 on bad usage or a
missing tool.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lab_report import PEERS, evaluate, render_table, write_section  # noqa: E402
from bench_lab_summary import percentile, round_modes, summarize  # noqa: E402
from bench_lab_sys import (  # noqa: E402
    cpu_seconds,
    kernel_threads,
    machine,
    machine_busy,
    proc_tree,
)

HS_SCRIPT = Path(__file__).resolve().parent / "bench_lab_hs.py"
NAME = "bench.example"
TOOLS = ("wrk", "nginx", "curl", "iptables", "ip")
# The pass baseline: a host list no connection of the benchmark matches, so govpass
# queues and parses every ClientHello and releases it unmodified.
PASS_ARGS = ["--hosts", "pass-baseline.invalid"]
# The kinds of round that run govpass (see bench_lab_summary.round_modes).
GOVPASS_MODES = ("with", "pass", "variant", "auto")
# Fallback while `python -m govpass` cannot be imported (a module being added elsewhere).
CLI_FALLBACK = ["-c", "from govpass.cli import app, run_cmd, rules_cmd, stats_cmd; app()"]


class BenchError(RuntimeError):
    """The benchmark could not measure something (not a missed goal)."""


def log(msg: str) -> None:
    print(f"[bench_lab {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ the bench


class Bench:
    def __init__(self, lab: Any, args: argparse.Namespace) -> None:
        self.lab = lab
        self.args = args
        self.wd: Path = lab.workdir
        self.ip = lab.address("server", 4)
        self.url = f"https://{NAME}"
        self.cafile: Path | None = None
        self.big = self.wd / "www" / "big.bin"
        self.run_dir = self.wd / "govpass-run"
        self.cli: list[str] = ["-m", "govpass"]
        self.daemon_pid: int | None = None
        self.prefilter = "unknown"  # as the daemon's log names it
        self.py_env = dict(os.environ)
        self.py_env["PYTHONPATH"] = str(REPO / "python") + (
            os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""
        )
        self.py_env["GOVPASS_RUN_DIR"] = str(self.run_dir)

    # -- setup

    def setup(self) -> None:
        from govpass.lab.server import make_cert

        cert, key = make_cert(self.wd, [NAME], [self.ip, self.lab.address("server", 6)])
        self.cafile = cert
        (self.wd / "www").mkdir()
        (self.wd / "www" / "index.txt").write_text("ok\n")
        with open(self.big, "wb") as f:
            f.write(os.urandom(self.args.bulk_mb * 1_000_000))
        conf = self.wd / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(wd=self.wd, cert=cert, key=key, workers=self.args.nginx_workers)
        )
        argv = ["nginx", "-c", str(conf), "-e", str(self.wd / "nginx-err.log")]
        pid = self.lab.spawn("server", argv)
        nginx_log = self.lab.log_of(pid)

        def listening() -> bool:
            if pid not in self.lab.alive():
                raise BenchError("nginx exited: " + nginx_log.read_text(errors="replace"))
            out = self.lab.exec("server", ["ss", "-Hltn", "sport = :443"]).stdout
            return bool(out.strip())

        wait(listening, 10, "nginx to listen on 443")
        # Client-side: a wide port range so the conn/s phase never runs short of ports.
        self.lab.exec("client", ["sysctl", "-qw", "net.ipv4.ip_local_port_range=10000 65000"])
        # Which govpass entry point imports today.
        probe = self.ns_python(["-m", "govpass", "--help"], check=False)
        if probe.returncode != 0:
            log("`python -m govpass` does not import; using the govpass.cli fallback")
            self.cli = CLI_FALLBACK
        # Warm-up (page cache, nginx, ARP/ND): not measured.
        self.curl_get()
        self.wrk(1)

    def ns_python(
        self, argv: list[str], check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["ip", "netns", "exec", self.lab.ns("client"), sys.executable, *argv]
        p = subprocess.run(cmd, capture_output=True, text=True, env=self.py_env, timeout=timeout)
        if check and p.returncode != 0:
            raise BenchError(f"{shlex.join(cmd)} exited {p.returncode}: {p.stderr[-1500:]}")
        return p

    # -- govpass daemon

    def daemon_argv(self, extra: list[str] | None = None) -> list[str]:
        return [
            *self.cli,
            "run",
            "--workers",
            str(self.args.workers),
            "--stats-interval",
            "0.5",
            *self.args.govpass_arg,
            *(extra or []),
        ]

    def start_daemon(self, extra: list[str] | None = None) -> None:
        self.run_dir.mkdir(exist_ok=True)
        pid = self.lab.spawn(
            "client",
            self.daemon_argv(extra),
            python=True,
            env={"GOVPASS_RUN_DIR": str(self.run_dir)},
        )
        self.daemon_pid = pid
        logf = self.lab.log_of(pid)

        def ready() -> bool:
            if pid not in self.lab.alive():
                raise BenchError("govpass run exited: " + logf.read_text(errors="replace")[-2000:])
            return (
                "rules installed" in logf.read_text(errors="replace") and "GOVPASS" in self.mangle()
            )

        wait(ready, 20, "govpass run to install its rules")
        found = re.search(r"pre-filter: (.+)", logf.read_text(errors="replace"))
        self.prefilter = found.group(1).strip() if found else "unknown"

    def stop_daemon(self) -> None:
        if self.daemon_pid is None:
            return
        pid, self.daemon_pid = self.daemon_pid, None
        self.lab.kill(pid)
        if "GOVPASS" in self.mangle():
            raise BenchError("govpass left its rules behind after SIGTERM:\n" + self.mangle())

    def mangle(self) -> str:
        return (
            self.lab.exec("client", ["iptables-save", "-t", "mangle"]).stdout
            + self.lab.exec("client", ["ip6tables-save", "-t", "mangle"]).stdout
        )

    def govpass_stats(self) -> dict[str, Any]:
        """``govpass stats --json``: the workers' counters plus the kernel queue drops."""
        # workers rewrite their counters every stats-interval/2 = 0.25 s, the daemon the
        # kernel split's every stats-interval = 0.5 s
        time.sleep(0.6)
        p = self.ns_python([*self.cli, "stats", "--json"])
        return json.loads(p.stdout)

    def worker_counters(self) -> dict[str, int]:
        """The workers' own counters summed, read from their files in the run directory
        (what `govpass stats` sums; ~1 s cheaper than starting the CLI between phases)."""
        time.sleep(0.6)
        total: dict[str, int] = {}
        for path in self.run_dir.glob("workers/worker-*.json"):
            for key, value in json.loads(path.read_text(encoding="utf-8")).items():
                if isinstance(value, int) and key != "queue":
                    total[key] = total.get(key, 0) + value
        if "packets" not in total:
            raise BenchError(f"no worker counters in {self.run_dir}")
        kernel = self.run_dir / "kernel-split.json"
        if kernel.exists():  # the daemon's counters of the kernel split
            for key, value in json.loads(kernel.read_text(encoding="utf-8")).items():
                if isinstance(value, int):
                    total[f"kernel_{key}"] = value
        return total

    def govpass_cpu(self) -> dict[int, float]:
        assert self.daemon_pid is not None
        return cpu_seconds(proc_tree(self.daemon_pid))

    # -- load generators

    def active_opens(self) -> int:
        text = self.lab.exec("client", ["cat", "/proc/net/snmp"]).stdout
        rows = [ln.split() for ln in text.splitlines() if ln.startswith("Tcp:")]
        return int(rows[1][rows[0].index("ActiveOpens")])

    def server_pids(self) -> list[int]:
        from govpass.lab.netns import netns_pids

        return netns_pids(self.lab.ns("server"))

    def server_rx_bytes(self) -> int:
        return int(
            self.lab.exec("server", ["cat", "/sys/class/net/eth0/statistics/rx_bytes"]).stdout
        )

    def curl_base(self) -> list[str]:
        return [
            "curl",
            "-sS",
            "--http1.1",
            "--cacert",
            str(self.cafile),
            "--resolve",
            f"{NAME}:443:{self.ip}",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download} %{size_upload} %{time_pretransfer} %{time_total}",
        ]

    def curl_get(self) -> dict[str, float]:
        p = self.lab.exec(
            "client", [*self.curl_base(), f"{self.url}/big.bin"], timeout=120, check=False
        )
        code, down, _up, pre, total = p.stdout.split() if p.stdout else ("0",) * 5
        if p.returncode != 0 or code != "200" or int(down) != self.big.stat().st_size:
            raise BenchError(f"download failed: rc={p.returncode} {p.stdout} {p.stderr}")
        secs = float(total) - float(pre)
        return {"bytes": int(down), "seconds": secs, "mbps": int(down) / secs / 1e6}

    def curl_put(self) -> dict[str, float]:
        rx0 = self.server_rx_bytes()
        p = self.lab.exec(
            "client",
            [
                *self.curl_base(),
                "-H",
                "Expect:",
                "-X",
                "POST",
                "-T",
                str(self.big),
                f"{self.url}/up",
            ],
            timeout=120,
            check=False,
        )
        rx = self.server_rx_bytes() - rx0
        code, _down, up, pre, total = p.stdout.split() if p.stdout else ("0",) * 5
        size = self.big.stat().st_size
        if p.returncode != 0 or code != "200" or int(up) != size:
            raise BenchError(f"upload failed: rc={p.returncode} {p.stdout} {p.stderr}")
        if rx < size:
            raise BenchError(
                f"upload: curl sent {up} bytes but the server received only "
                f"{rx} bytes on its interface"
            )
        secs = float(total) - float(pre)
        return {
            "bytes": int(up),
            "seconds": secs,
            "mbps": int(up) / secs / 1e6,
            "server_rx_bytes": rx,
        }

    def wrk(self, duration: int) -> dict[str, Any]:
        argv = [
            "wrk",
            f"-t{self.args.wrk_threads}",
            f"-c{self.args.connections}",
            f"-d{duration}s",
            "-H",
            "Connection: close",
            f"https://{self.ip}/",
        ]
        out = self.wd / "wrk.out"
        with open(out, "w") as f:
            # `ip netns exec` execs wrk in place, so wait4() gives wrk's own CPU time.
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.lab.ns("client"), *argv],
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            proc.returncode = 0  # reaped above; keep Popen from waiting again
        text = out.read_text(errors="replace")
        if os.waitstatus_to_exitcode(status) != 0:
            raise BenchError(f"wrk failed: {text}")
        result = parse_wrk(text)
        result["wrk_cpu_s"] = usage.ru_utime + usage.ru_stime
        result["wrk_ctx_switches"] = {"voluntary": usage.ru_nvcsw, "involuntary": usage.ru_nivcsw}
        return result

    def handshakes(self) -> dict[str, Any]:
        p = self.lab.exec(
            "client",
            [
                sys.executable,
                str(HS_SCRIPT),
                "--host",
                self.ip,
                "--name",
                NAME,
                "--cafile",
                str(self.cafile),
                "-n",
                str(self.args.handshakes),
                "--pause-ms",
                "0.2",
            ],
            timeout=300,
            check=False,
        )
        if p.returncode != 0:
            raise BenchError(f"handshake loop failed: {p.stderr[-1500:]}")
        data = json.loads(p.stdout)
        if data["errors"]:
            raise BenchError(
                f"handshake loop: {data['errors']} errors, first: {data['first_error']}"
            )
        return data

    def wait_quiet(self) -> float:
        """Wait up to --quiet-wait s for other jobs to use < --quiet-cores cores (nothing
        of ours is busy between rounds); returns the load last seen, in cores."""
        deadline = time.monotonic() + self.args.quiet_wait
        while True:
            b0 = machine_busy()[0]
            time.sleep(0.5)
            load = (machine_busy()[0] - b0) / 0.5
            if load < self.args.quiet_cores or time.monotonic() >= deadline:
                return load

    # -- one round

    def conntrack_rules(self, action: str) -> None:
        """The "conntrack" baseline: a no-op rule that makes the client namespace track
        connections (as govpass's rules do), with nothing queued to user space."""
        for tool in ("iptables", "ip6tables"):
            self.lab.exec(
                "client",
                [
                    tool,
                    "-w",
                    "-t",
                    "mangle",
                    action,
                    "OUTPUT",
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "INVALID",
                    "-j",
                    "RETURN",
                ],
            )

    def auto_args(self) -> list[str]:
        """--strategy auto with its state in the lab's directory (never the host's)."""
        return ["--strategy", "auto", "--strategy-state", str(self.wd / "strategies.json")]

    def round(self, index: int, mode: str) -> dict[str, Any]:
        with_gp = mode in GOVPASS_MODES
        r: dict[str, Any] = {"round": index, "mode": mode, "timing": {}}
        t_last = time.monotonic()

        def mark(phase: str) -> None:
            nonlocal t_last
            now = time.monotonic()
            r["timing"][phase] = round(now - t_last, 2)
            t_last = now

        if with_gp:
            extras = {"pass": PASS_ARGS, "variant": self.args.variant_arg, "auto": self.auto_args()}
            extra = extras.get(mode, [])
            self.start_daemon(extra)
            if mode == "variant":
                r["variant"] = shlex.join(extra)
            mark("daemon_start")
        elif mode == "conntrack":
            self.conntrack_rules("-I")
        try:
            opens0 = self.active_opens()
            # 1. handshake latency (first: the daemon's flow table is fresh, no port reused)
            hs = self.handshakes()
            r["handshake_us"] = hs["handshake_us"]
            r["connect_us"] = hs["connect_us"]
            mark("handshakes")
            if with_gp:
                st = self.worker_counters()
                r["hs_phase"] = {
                    "connections": self.active_opens() - opens0,
                    "packets": st.get("packets", 0),
                    # by the workers or in the kernel (kernel split)
                    "splits": st.get("splits", 0) + st.get("kernel_split", 0),
                    "kernel_splits": st.get("kernel_split", 0),
                }
            # 2. bulk: --bulk-reps transfers each way, each on one connection; the round
            # keeps the best one (the least disturbed by other jobs on the machine)
            downs = [self.curl_get() for _ in range(self.args.bulk_reps)]
            ups = [self.curl_put() for _ in range(self.args.bulk_reps)]
            r["download"] = max(downs, key=lambda x: x["mbps"]) | {
                "all_mbps": [round(x["mbps"]) for x in downs]
            }
            r["upload"] = max(ups, key=lambda x: x["mbps"]) | {
                "all_mbps": [round(x["mbps"]) for x in ups]
            }
            mark("bulk")
            # 3. new connections per second, with the CPU of everything on the machine
            if with_gp:
                st0 = self.worker_counters()
                cpu0 = self.govpass_cpu()
            nginx = cpu_seconds(self.server_pids())
            kthreads = cpu_seconds(kernel_threads())
            mark("before_wrk")
            busy0, c0 = machine_busy(), self.active_opens()
            r["wrk"] = self.wrk(self.args.duration)
            mark("wrk")
            busy1, c1 = machine_busy(), self.active_opens()
            r["wrk"]["connections"] = c1 - c0
            nginx1 = cpu_seconds(self.server_pids())
            r["wrk"]["nginx_cpu_s"] = sum(nginx1[p] - nginx[p] for p in nginx1 if p in nginx)
            kthreads1 = cpu_seconds(kernel_threads())
            # ksoftirqd & co.: mostly this benchmark's own packets, when softirqs back up
            r["wrk"]["kthreads_cpu_s"] = sum(
                kthreads1[p] - kthreads[p] for p in kthreads1 if p in kthreads
            )
            r["wrk"]["machine_busy_s"] = busy1[0] - busy0[0]
            r["wrk"]["machine_softirq_s"] = busy1[1] - busy0[1]
            r["wrk"]["machine_steal_s"] = busy1[2] - busy0[2]
            gp_cpu = 0.0
            if with_gp:
                time.sleep(0.2)  # let the worker finish what is still queued
                cpu1 = self.govpass_cpu()
                gp_cpu = sum(cpu1[p] - cpu0[p] for p in cpu1 if p in cpu0)
                r["cpu_s"] = gp_cpu
                r["cpu_by_pid"] = {str(p): round(cpu1[p] - cpu0[p], 3) for p in cpu1 if p in cpu0}
                st1 = self.govpass_stats()
                r["wrk_phase"] = {
                    k: st1.get(k, 0) - st0.get(k, 0)
                    for k in ("packets", "splits", "passed", "flows", "segments")
                }
                kernel = st1.get("kernel_split", 0) - st0.get("kernel_split", 0)
                r["wrk_phase"]["kernel_splits"] = kernel
                r["wrk_phase"]["splits"] += kernel
                r["stats"] = st1
                r["connections_total"] = self.active_opens() - opens0
            # CPU of processes outside this benchmark (other jobs on the machine), in
            # cores: what makes connections/s noisy on a shared machine.
            w = r["wrk"]
            ours = w["wrk_cpu_s"] + w["nginx_cpu_s"] + gp_cpu + w["kthreads_cpu_s"]
            w["other_cores"] = max(0.0, w["machine_busy_s"] - ours) / w["seconds"]
            mark("after_wrk")
        finally:
            if with_gp:
                self.stop_daemon()
                mark("daemon_stop")
            elif mode == "conntrack":
                self.conntrack_rules("-D")
        return r


NGINX_CONF = """\
worker_processes {workers};
daemon off;
user root;
pid {wd}/nginx.pid;
error_log {wd}/nginx-err.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {wd}/nginx-body;
    proxy_temp_path {wd}/nginx-proxy;
    fastcgi_temp_path {wd}/nginx-fastcgi;
    uwsgi_temp_path {wd}/nginx-uwsgi;
    scgi_temp_path {wd}/nginx-scgi;
    keepalive_requests 1000000;
    server {{
        listen 443 ssl;
        listen [::]:443 ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {wd}/www;
        client_max_body_size 0;
        location = / {{ return 200 "ok\\n"; }}
        # The body is read and discarded (nginx answers first, then drains it); the
        # benchmark checks the server's rx byte counter to be sure all of it arrived.
        location = /up {{ return 200 "up\\n"; }}
    }}
}}
"""


def parse_wrk(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {"errors": 0, "non2xx": 0}
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("Requests/sec:"):
            out["rps"] = float(s.split()[1])
        elif " requests in " in s:
            parts = s.split()
            out["requests"] = int(parts[0])
            out["seconds"] = float(parts[3].rstrip("s,"))
        elif s.startswith("Socket errors:"):
            out["errors"] = sum(int(tok.rstrip(",")) for tok in s.split()[3::2])
        elif s.startswith("Non-2xx"):
            out["non2xx"] = int(s.split()[-1])
    if "rps" not in out:
        raise BenchError(f"cannot parse wrk output:\n{text}")
    return out


def wait(predicate: Any, timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise BenchError(f"timed out after {timeout}s waiting for {what}")


# ------------------------------------------------------------------ summary


# ------------------------------------------------------------------ main


@contextmanager
def lab_bench(argv: list[str]) -> Iterator[Bench]:
    """A lab with nginx set up (``bench_lab.py`` options ``argv``), for the other
    benchmark scripts; says so when tearing it down left something behind."""
    from govpass.lab import Lab

    with Lab(router=False) as lab:
        bench = Bench(lab, parse_args([*argv, "--no-write"]))
        bench.setup()
        yield bench
        problems = lab.close()
        if problems:
            print(f"lab teardown problems: {problems}", file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--rounds", type=int, default=8, help="rounds, a multiple of 4 (ABBA order); default 8"
    )
    ap.add_argument("--duration", type=int, default=8, help="wrk seconds per round")
    ap.add_argument("--connections", type=int, default=16, help="wrk -c")
    ap.add_argument("--wrk-threads", type=int, default=1, help="wrk -t")
    ap.add_argument("--handshakes", type=int, default=500, help="sequential handshakes/round")
    ap.add_argument("--bulk-mb", type=int, default=64, help="bulk transfer size (10^6 bytes)")
    ap.add_argument(
        "--bulk-reps",
        type=int,
        default=8,
        help="transfers each way per round; the best counts (default 8)",
    )
    ap.add_argument("--workers", type=int, default=1, help="govpass run --workers")
    ap.add_argument("--nginx-workers", default="1", help="nginx worker_processes")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=15,
        help="before each pair of rounds, wait up to this many seconds for other "
        "jobs on the machine to calm down (0: never wait)",
    )
    ap.add_argument(
        "--quiet-cores",
        type=float,
        default=0.25,
        help="'calm' means other jobs use fewer cores than this",
    )
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the whole benchmark (wrk, nginx, govpass alike) at this nice "
        "level, e.g. -10 on a machine shared with other jobs (default 0)",
    )
    ap.add_argument(
        "--govpass-arg",
        action="append",
        default=[],
        help="extra argument for `govpass run` (repeatable)",
    )
    ap.add_argument(
        "--conntrack-baseline",
        action="store_true",
        help="add a third kind of round: no govpass, only a no-op conntrack rule in the "
        "client namespace (how much of the cost is connection tracking itself)",
    )
    ap.add_argument(
        "--pass-baseline",
        action="store_true",
        help="add a kind of round with govpass queueing every ClientHello and releasing "
        "it unmodified (a host list no connection matches): the cost of the trip through "
        "user space without the split",
    )
    ap.add_argument(
        "--variant-arg",
        action="append",
        default=[],
        help="add a kind of round with govpass run with this extra argument (repeatable), "
        "to compare it with the default in the same run, e.g. --variant-arg=--inject "
        "--variant-arg=raw",
    )
    ap.add_argument(
        "--strategy-auto",
        action="store_true",
        help="add a kind of round with `govpass run --strategy auto` (its state in the "
        "lab's directory): the cost of learning strategies per host name, against the "
        "default govpass rounds of the same run",
    )
    ap.add_argument("--json", type=Path, help="also write the full results here")
    ap.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    ap.add_argument("--benchmarks-md", type=Path, default=REPO / "BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.rounds < 2 or args.rounds % 2:
        ap.error("--rounds must be even (a multiple of 4 for a balanced ABBA order)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench_lab: run as root (network namespaces, iptables, NFQUEUE)", file=sys.stderr)
        return 2
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        print(
            f"bench_lab: missing {' '.join(missing)} (bash ci/lab-deps.sh; "
            "apt-get install -y wrk nginx-light)",
            file=sys.stderr,
        )
        return 2
    from govpass.lab import Lab, LabError

    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by everything spawned

    command = "sudo python3 ci/bench_lab.py" + (
        " " + shlex.join(argv if argv is not None else sys.argv[1:])
        if (argv if argv is not None else sys.argv[1:])
        else ""
    )
    info = machine(REPO)
    t_start = time.monotonic()
    rounds: list[dict[str, Any]] = []
    try:
        with Lab(router=False) as lab:
            bench = Bench(lab, args)
            log(f"lab {lab.prefix}: setting up nginx, {args.bulk_mb} MB file, warm-up")
            bench.setup()
            info["govpass_cmd"] = "python " + shlex.join(bench.daemon_argv())
            variant = bool(args.variant_arg)
            auto = args.strategy_auto
            modes = round_modes(
                args.rounds, args.conntrack_baseline, args.pass_baseline, variant, auto
            )
            group = 2 + args.conntrack_baseline + args.pass_baseline + variant + auto
            for i, mode in enumerate(modes):
                if i % group == 0 and args.quiet_wait > 0:
                    load = bench.wait_quiet()
                    if load >= args.quiet_cores:
                        log(f"other jobs still use {load:.2f} cores; measuring anyway")
                log(f"round {i + 1}/{len(modes)}: {mode}")
                r = bench.round(i + 1, mode)
                if mode == "with":
                    info["prefilter"] = bench.prefilter
                rounds.append(r)
                log(
                    f"  conn/s {r['wrk']['rps']:.0f} (other jobs: "
                    f"{r['wrk']['other_cores']:.2f} cores)  hs p50 "
                    f"{percentile(r['handshake_us'], 50) / 1000:.3f} ms  down "
                    f"{r['download']['mbps']:.0f} MB/s  up {r['upload']['mbps']:.0f} MB/s"
                    + (
                        f"  cpu {r['cpu_s']:.2f} s  packets {r['stats'].get('packets')}"
                        f"  splits {r['stats'].get('splits')}"
                        if mode in GOVPASS_MODES
                        else ""
                    )
                )
            problems = lab.close()
            if problems:
                log(f"lab teardown problems: {problems}")
    except (BenchError, LabError, subprocess.TimeoutExpired) as exc:
        print(f"bench_lab: FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_lab: interrupted", file=sys.stderr)
        return 1

    summary = summarize(rounds)
    verdicts = evaluate(summary)
    info["elapsed_s"] = round(time.monotonic() - t_start, 1)
    result = {
        "machine": info,
        "command": command,
        "args": vars(args)
        | {"json": str(args.json) if args.json else None, "benchmarks_md": str(args.benchmarks_md)},
        "summary": summary,
        "goals": verdicts,
        "peers": PEERS,
    }
    print(json.dumps({k: v for k, v in result.items()}, indent=2, default=str))
    print()
    print(render_table(summary, verdicts))
    if args.json:
        args.json.write_text(json.dumps(result | {"rounds": rounds}, indent=1, default=str))
    if not args.no_write:
        write_section(args.benchmarks_md, result)
        log(f"wrote the ## Lab section of {args.benchmarks_md}")
    missed = [g for g, v in verdicts.items() if not v["met"]]
    log(f"done in {info['elapsed_s']} s; goals missed: {', '.join(missed) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
