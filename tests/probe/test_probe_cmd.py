"""`govpass probe` input checks: one clear line and a non-zero exit, before any work."""

from __future__ import annotations

import subprocess
import sys

import pytest
from govpass.cli.probe_cmd import check_host
from govpass.errors import ConfigError


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "govpass", "probe", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"},
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["bad\x1bname.example"], "invalid host"),
        (["a..b"], "invalid host"),
        (["ok.example", "--connect", "nowhere"], "invalid --connect"),
        (["ok.example", "--control", "-x-/y"], "invalid --control"),
    ],
)
def test_bad_input_is_one_line(args: list[str], words: str) -> None:
    proc = _probe(*args)
    assert proc.returncode == 2, proc
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and words in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "\x1b" not in proc.stderr


def test_check_host() -> None:
    assert check_host("Blocked.Example.", "host") == "blocked.example"
    assert check_host("2001:db8::1", "host") == "2001:db8::1"
    with pytest.raises(ConfigError):
        check_host("x" * 300, "host")


def test_without_privileges_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Lacking capabilities (mocked: the test runs as root), the probe says what it
    needs in one line, before touching anything."""
    import govpass.privileges
    from govpass.cli import main

    monkeypatch.setattr(govpass.privileges, "missing_capabilities", lambda: ["CAP_NET_RAW"])
    with pytest.raises(SystemExit) as exit_info:
        main(["probe", "blocked.example"])
    assert exit_info.value.code == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert "needs root or CAP_NET_ADMIN and CAP_NET_RAW" in lines[0]
    assert "missing CAP_NET_RAW" in lines[0]
