"""Helpers of the targeting end-to-end tests. The lab: client — censor — server, the
firstpacket censor blocking only ``blocked.example``; the server answers
``blocked.example`` and ``allowed.example``.

Root only: without it every test fails with one clear line (never skips).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

try:
    import govpass.lab  # noqa: F401
except ModuleNotFoundError as exc:  # a source tree without an install
    if exc.name != "govpass":
        raise
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))

from govpass.lab import Lab

BLOCKED, ALLOWED = "blocked.example", "allowed.example"
FAIL_TIMEOUT = 3.0  # a censored curl gives up after this long (hello retransmitted 3 times)
PASS_TIMEOUT = 10.0


@pytest.fixture(scope="session", autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "the targeting end-to-end tests need root (network namespaces, NFQUEUE, "
            "iptables, tcpdump); run them as root, e.g. in CI or with sudo",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    lab = Lab(router=False)
    lab.start()
    try:
        lab.start_server(names=[BLOCKED, ALLOWED])
        lab.start_censor("firstpacket", names=[BLOCKED])
        yield lab
    finally:
        problems = lab.close()
    assert problems == [] and lab.leftovers() == [], (problems, lab.leftovers())


def curl(lab: Lab, name: str, family: int = 4, timeout: float = PASS_TIMEOUT) -> bool:
    return lab.client("curl", name, family=family, timeout=timeout)[0]


def wait_until(what: str, ready: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}", pytrace=False)
        time.sleep(0.1)


class Daemon:
    """``govpass run`` in the client namespace with its own run directory."""

    def __init__(self, lab: Lab, args: Sequence[str], workers: int = 1) -> None:
        self.lab = lab
        self.args = ["run", "--workers", str(workers), "--stats-interval", "0.5", *args]
        self.run_dir = lab.workdir / f"run-{time.monotonic_ns()}"
        self.pid = lab.spawn(
            "client",
            ["-m", "govpass", *self.args],
            python=True,
            env={"GOVPASS_RUN_DIR": str(self.run_dir)},
        )
        self.log_path = lab.log_of(self.pid)
        wait_until(f"govpass {' '.join(self.args)} to start: {self.log()}", self._started, 20)

    def _started(self) -> bool:
        if self.popen().poll() is not None:
            pytest.fail(f"govpass exited: {self.log()}", pytrace=False)
        return "running:" in self.log()

    def popen(self) -> subprocess.Popen[bytes]:
        return self.lab.procs.procs[self.pid].popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> list[int]:
        with contextlib.suppress(OSError):
            path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
            return [int(p) for p in path.read_text().split()]
        return []

    def stats(self) -> dict[str, object]:
        import json

        from govpass.runtime.state import aggregate

        with contextlib.suppress(OSError, ValueError):
            return dict(json.loads((self.run_dir / "stats.json").read_text()))
        return aggregate(self.run_dir)

    def worker_stats(self) -> list[dict[str, object]]:
        import json

        out = []
        for path in sorted(self.run_dir.glob("workers/worker-*.json")):
            with contextlib.suppress(OSError, ValueError):
                out.append(dict(json.loads(path.read_text())))
        return out

    def wait_log(self, text: str, count: int = 1, timeout: float = 10.0) -> None:
        wait_until(f"{count}x {text!r} in the log:\n{self.log()[-3000:]}",
                   lambda: self.log().count(text) >= count, timeout)  # fmt: skip

    def stop(self) -> int:
        popen = self.popen()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        rc = popen.wait(timeout=15)
        self.lab.kill(self.pid)
        return rc


@contextlib.contextmanager
def running(lab: Lab, args: Sequence[str], workers: int = 1) -> Iterator[Daemon]:
    lab.close_connections()  # an earlier test's retransmitting hellos are not ours
    daemon = Daemon(lab, args, workers)
    try:
        yield daemon
    finally:
        rc = daemon.stop()
    assert rc == 0, daemon.log()[-3000:]
    assert "rules removed" in daemon.log(), daemon.log()[-3000:]
    left = lab.exec("client", ["iptables-save", "-t", "mangle"]).stdout
    assert "GOVPASS" not in left, left
