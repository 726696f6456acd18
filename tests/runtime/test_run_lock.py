"""The run directory's lock, the one way every backend marks itself as running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from govpass.errors import BackendError
from govpass.runtime import run_lock
from govpass.runtime.run_lock import LOCK_NAME, claim_run_lock, hold_run_lock, running_daemon


def test_a_stale_daemon_json_whose_pid_lives_is_no_daemon(tmp_path: Path) -> None:
    # Left by a divert run that crashed; its pid now belongs to a live process (this one).
    (tmp_path / "daemon.json").write_text(json.dumps({"pid": os.getpid(), "backend": "divert"}))
    assert running_daemon(tmp_path) is None
    fd = claim_run_lock(tmp_path)
    try:
        assert running_daemon(tmp_path) == os.getpid()
    finally:
        run_lock.release_run_lock(fd)
    assert running_daemon(tmp_path) is None


def test_a_second_claim_names_the_holder_in_one_line(tmp_path: Path) -> None:
    fd = claim_run_lock(tmp_path)
    try:
        with pytest.raises(BackendError, match=rf"^another govpass daemon \(pid {os.getpid()}\)"):
            claim_run_lock(tmp_path)
    finally:
        run_lock.release_run_lock(fd)


def test_the_lock_modules_import_where_there_is_no_fcntl() -> None:
    # Windows has no fcntl: the modules its divert backend imports must not need it.
    code = (
        "import sys; sys.modules['fcntl'] = None\n"
        "import govpass.runtime.run_lock, govpass.runtime.nfqueue_service\n"
        "import govpass.runtime.divert_service\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


class FakeMsvcrt:
    """msvcrt.locking's contract: a byte range at the file position, exclusive
    across descriptors, LK_NBLCK failing with OSError when taken."""

    LK_UNLCK, LK_NBLCK = 0, 2

    def __init__(self) -> None:
        self.held: dict[tuple[int, int, int], int] = {}  # (dev, ino, offset) -> fd

    def locking(self, fd: int, mode: int, nbytes: int) -> None:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino, os.lseek(fd, 0, os.SEEK_CUR))
        assert nbytes == 1
        if mode == self.LK_UNLCK:
            assert self.held.pop(key) == fd
        elif key in self.held:
            raise OSError(13, "Permission denied")
        else:
            self.held[key] = fd


def test_windows_locks_a_byte_past_the_pid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeMsvcrt()
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    monkeypatch.setitem(sys.modules, "fcntl", None)  # the flock path must not be taken
    fd = hold_run_lock(tmp_path)
    assert fd is not None
    assert list(fake.held) == [(*_file_id(tmp_path / LOCK_NAME), 64)]
    assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert running_daemon(tmp_path) == os.getpid()
    assert hold_run_lock(tmp_path) is None
    fake.held.clear()  # the holder died: Windows drops its locks
    os.close(fd)
    assert running_daemon(tmp_path) is None


def _file_id(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def test_divert_refuses_to_open_while_another_daemon_holds_the_run_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from govpass.backends import divert
    from govpass.config import load
    from govpass.runtime import divert_service

    class Worker:
        def __init__(self, _config: object) -> None:
            pass

        def watch_lists(self, _log: object) -> None:
            return None

        def open(self) -> None:
            raise AssertionError("a second run opened a divert handle")

    monkeypatch.setenv("GOVPASS_RUN_DIR", str(tmp_path))
    monkeypatch.setattr(divert, "unavailable_reason", lambda: "")
    monkeypatch.setattr(divert, "check_privileges", lambda: None)
    monkeypatch.setattr(divert, "DivertWorker", Worker)
    monkeypatch.setattr(divert_service, "clean_leftovers", lambda _log: None)
    if sys.platform.startswith("freebsd"):
        pytest.skip("run_divert hands FreeBSD to its own backend")
    fd = claim_run_lock(tmp_path)
    try:
        with pytest.raises(BackendError, match="already running with run directory"):
            divert_service.run_divert(load(env={}), lambda _m: None)
    finally:
        run_lock.release_run_lock(fd)
