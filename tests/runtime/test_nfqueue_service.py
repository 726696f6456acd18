"""The daemon's run directory: a live daemon is the process holding the flock on
daemon.lock, never whatever a daemon.json says; unsafe run directories are refused
before anything is bound or installed."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from govpass.config import load
from govpass.errors import GovpassError
from govpass.runtime.nfqueue_service import NfqueueService
from govpass.runtime.run_lock import LOCK_NAME, hold_run_lock, running_daemon
from govpass.runtime.state import write_json_atomic

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o640)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / LOCK_NAME)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_held_lock_is_a_running_daemon(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    assert running_daemon(tmp_path) == holder.pid
    assert hold_run_lock(tmp_path) is None, "a second daemon cannot take it"
    holder.kill()
    holder.wait()
    assert running_daemon(tmp_path) is None, "the lock went with the process (SIGKILL)"
    fd = hold_run_lock(tmp_path)
    assert fd is not None
    try:
        assert running_daemon(tmp_path) == os.getpid()
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        assert stat.S_IMODE(os.stat(tmp_path / LOCK_NAME).st_mode) == 0o640
    finally:
        os.close(fd)


def test_a_stale_daemon_json_naming_a_govpass_process_blocks_nothing(tmp_path: Path) -> None:
    # A reused pid: a live process with "govpass" in its command line.
    impostor = subprocess.Popen(["sh", "-c", "sleep 30", "govpass"])
    try:
        write_json_atomic(tmp_path / "daemon.json", {"pid": impostor.pid})
        (tmp_path / LOCK_NAME).write_text(f"{impostor.pid}\n")  # left by a crashed daemon
        assert running_daemon(tmp_path) is None
        fd = hold_run_lock(tmp_path)
        assert fd is not None
        os.close(fd)
    finally:
        impostor.kill()
        impostor.wait()


def test_a_symlink_as_the_lock_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    (tmp_path / LOCK_NAME).symlink_to(victim)
    with pytest.raises(OSError):
        hold_run_lock(tmp_path)
    assert victim.read_text() == "root's file\n"
    assert running_daemon(tmp_path) is None


def test_state_files_are_not_world_readable(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "stats.json", {"pid": 1})
    assert stat.S_IMODE(os.stat(tmp_path / "stats.json").st_mode) == 0o640
    assert json.loads((tmp_path / "stats.json").read_text()) == {"pid": 1}


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_start_refuses_a_run_directory_others_can_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(mode)
    monkeypatch.setenv("GOVPASS_RUN_DIR", str(run))
    daemon = NfqueueService(
        load(env={}, flags={"firewall": "none", "workers": "1"}), lambda m: None
    )
    with pytest.raises(GovpassError, match=f"^run directory {run}: writable by"):
        daemon.start()
    assert daemon.workers == [] and not daemon.rules_installed
    assert list(run.iterdir()) == [], "nothing written into it"


def test_a_new_run_directory_is_0750(tmp_path: Path) -> None:
    from govpass.safefile import make_directory

    make_directory(tmp_path / "govpass", "run directory")
    assert stat.S_IMODE(os.stat(tmp_path / "govpass").st_mode) == 0o750


def test_stats_finds_the_daemon_by_its_lock(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    def stats() -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "govpass", "stats", "--json"]
        env = {**os.environ, "GOVPASS_RUN_DIR": str(tmp_path)}
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)

    write_json_atomic(tmp_path / "worker-0.json", {"queue": -1, "flows": 3})
    result = stats()
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pid"] == holder.pid
    assert json.loads(result.stdout)["flows"] == 3
    holder.kill()
    holder.wait()
    result = stats()
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "no running govpass daemon" in result.stderr


def test_an_error_quoting_a_hostile_path_is_one_escaped_line(tmp_path: Path) -> None:
    run = tmp_path / "run\x1b]0;pwned\x07\nforged line"
    argv = [sys.executable, "-m", "govpass", "stats"]
    env = {**os.environ, "GOVPASS_RUN_DIR": str(run)}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr
    assert "run\\x1b]0;pwned\\x07\\x0aforged line" in proc.stderr


def test_rules_that_cannot_be_read_are_said_once_and_recovery_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule check cannot read the rules (no CAP_NET_ADMIN, say): one line, not one
    a check, and one more when it can read them again."""
    from govpass.errors import FirewallError
    from govpass.runtime import nfqueue_service

    monkeypatch.setenv("GOVPASS_RUN_DIR", str(tmp_path))
    log: list[str] = []
    daemon = NfqueueService(load(env={}, flags={"firewall": "none"}), log.append)
    installed = (("ip mangle", ("-A GOVPASS",)),)
    daemon._rules_seen = installed
    answers: list[object] = [FirewallError("Permission denied (you must be root)")] * 3
    answers.append(installed)

    def rules_now() -> object:
        got = answers.pop(0)
        if isinstance(got, Exception):
            raise got
        return got

    monkeypatch.setattr(nfqueue_service, "_rules_now", rules_now)
    for _ in range(4):
        daemon._check_rules()
    assert log == [
        "cannot read the installed rules to check them: Permission denied (you must be root)",
        "the installed rules can be read again",
    ]
