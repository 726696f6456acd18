"""State files written without following anyone's symlinks, in directories nobody else
can change, readable by owner and group only."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from govpass.safefile import (
    UnsafePathError,
    check_directory,
    make_directory,
    read_regular,
    write_atomic,
)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_file_is_replaced_whole_with_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_atomic(path, "one")
    assert path.read_text() == "one" and mode_of(path) == 0o640
    inode = os.stat(path).st_ino
    write_atomic(path, b"two", 0o600)
    assert path.read_text() == "two" and mode_of(path) == 0o600
    assert os.stat(path).st_ino != inode
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"], "no temporary file left"


def test_the_umask_does_not_widen_or_narrow_the_mode(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_atomic(tmp_path / "a", "x")
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "a") == 0o640


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root's file")
    victim.chmod(0o600)
    (tmp_path / "stats.json").symlink_to(victim)
    write_atomic(tmp_path / "stats.json", "{}")
    assert victim.read_text() == "root's file" and mode_of(victim) == 0o600
    assert not (tmp_path / "stats.json").is_symlink()
    assert (tmp_path / "stats.json").read_text() == "{}"


def test_symlinks_at_guessable_temporary_names_are_never_opened(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root's file")
    target = tmp_path / "daemon.json"
    for guess in (f"daemon.json.{os.getpid()}.tmp", f".daemon.json.{os.getpid()}.tmp"):
        (tmp_path / guess).symlink_to(victim)
    write_atomic(target, "{}")
    assert victim.read_text() == "root's file"
    assert target.read_text() == "{}"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path / "dir", "x")  # the rename fails
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]


def test_an_interrupt_just_after_the_rename_goes_on_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal's exception that arrives once the rename is done: the clean-up finds
    no temporary file and must not replace the interrupt with FileNotFoundError."""
    target = tmp_path / "stats.json"
    real_replace = os.replace

    def replace_then_interrupt(src: str, dst: Path) -> None:
        real_replace(src, dst)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]


@pytest.mark.root
def test_the_owner_of_a_replaced_file_is_kept(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file away needs root")  # the CI runs as root
    write_atomic(tmp_path / "list", "x", owner=(65534, 65534))
    st = os.stat(tmp_path / "list")
    assert (st.st_uid, st.st_gid) == (65534, 65534)


@pytest.mark.parametrize(
    ("mode", "why"),
    [(0o777, "by others"), (0o1777, "by others"), (0o770, "by its group")],
)
def test_directories_others_can_write_are_refused(tmp_path: Path, mode: int, why: str) -> None:
    d = tmp_path / "run"
    d.mkdir()
    d.chmod(mode)
    with pytest.raises(UnsafePathError, match=f"run directory {d}: writable {why}"):
        check_directory(d, "run directory")


@pytest.mark.root
def test_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a directory away needs root")
    d = tmp_path / "run"
    d.mkdir(mode=0o755)
    os.chown(d, 65534, 65534)
    with pytest.raises(UnsafePathError, match=r"run directory .*: owned by uid 65534"):
        check_directory(d, "run directory")


def test_a_file_or_a_missing_path_is_no_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(UnsafePathError, match="not a directory"):
        check_directory(tmp_path / "f", "run directory")
    with pytest.raises(UnsafePathError, match="cannot use it: No such file"):
        check_directory(tmp_path / "missing", "run directory")


def test_a_new_directory_is_0750_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        make_directory(tmp_path / "a" / "run", "run directory")
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "a" / "run") == 0o750
    make_directory(tmp_path / "a" / "run", "run directory")  # exists: fine


def test_reading_takes_only_small_regular_files(tmp_path: Path) -> None:
    (tmp_path / "ok").write_bytes(b"data")
    assert read_regular(tmp_path / "ok", 4) == b"data"
    with pytest.raises(OSError, match="larger than 3 bytes"):
        read_regular(tmp_path / "ok", 3)
    (tmp_path / "link").symlink_to(tmp_path / "ok")
    with pytest.raises(OSError):
        read_regular(tmp_path / "link", 100)
    os.mkfifo(tmp_path / "fifo")
    done = threading.Event()

    def read_fifo() -> None:
        with pytest.raises(OSError, match="not a regular file"):
            read_regular(tmp_path / "fifo", 100)
        done.set()

    worker = threading.Thread(target=read_fifo, daemon=True)
    worker.start()
    worker.join(5)
    assert done.is_set(), "a FIFO must not hang the reader"
