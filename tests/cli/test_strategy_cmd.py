"""`govpass strategy show | clear` on a state file (no daemon, no root needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def govpass(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "govpass", *args], capture_output=True, text=True, timeout=60
    )


def write_state(path: Path) -> None:
    hosts = {
        "a.example": {"strategy": "1"},
        "b.example": {"strategy": "5", "unfixable_until": 4e9},
        "bad\x1b name": {"strategy": "1"},
    }
    path.write_text(json.dumps({"govpass": "strategies", "version": 1, "hosts": hosts}))


def test_show_lists_valid_hosts_and_clear_removes_the_file(tmp_path: Path) -> None:
    state = tmp_path / "strategies.json"
    write_state(state)
    shown = govpass("strategy", "show", "--strategy-state", str(state))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == ["a.example 1", "b.example unfixable"]
    as_json = govpass("strategy", "show", "--json", "--strategy-state", str(state))
    assert json.loads(as_json.stdout) == {"a.example": "1", "b.example": "unfixable"}
    cleared = govpass("strategy", "clear", "--strategy-state", str(state))
    assert cleared.returncode == 0 and not state.exists()
    again = govpass("strategy", "clear", "--strategy-state", str(state))
    assert again.returncode == 0 and "nothing to clear" in again.stdout


def test_a_foreign_state_file_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    state = tmp_path / "strategies.json"
    state.write_text("[1, 2]")
    shown = govpass("strategy", "show", "--strategy-state", str(state))
    assert shown.returncode == 1
    assert len(shown.stderr.strip().splitlines()) == 1 and "Traceback" not in shown.stderr


def test_show_names_the_auto_profile_of_its_hosts(tmp_path: Path) -> None:
    state = tmp_path / "strategies.json"
    data = {
        "govpass": "strategies",
        "version": 1,
        "hosts": {"a.example": {"strategy": "1"}},
        "profiles": {"ru": {"a.example": {"strategy": "2,midsld"}}},
    }
    state.write_text(json.dumps(data))
    shown = govpass("strategy", "show", "--strategy-state", str(state))
    assert shown.stdout.splitlines() == ["a.example 1", "ru:a.example 2,midsld"], shown.stderr
