"""``govpass lab``: the one-command demonstration builds, runs and removes its own lab."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import PACKAGE_ROOT
from govpass.lab import analyze
from govpass.lab.netns import netns_list

pytestmark = pytest.mark.netns


def govpass(args: list[str], cwd: Path, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_ROOT), COLUMNS="120")
    return subprocess.run(
        [sys.executable, "-m", "govpass", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_lab_command_firstpacket(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "govpass", "lab", "--censor", "firstpacket"],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(PACKAGE_ROOT), COLUMNS="120"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out + err
    m = re.search(r"with govpass: (\d+)/(\d+) passed", out)
    assert m and m.group(1) == m.group(2) and int(m.group(2)) >= 6, out
    # Everything it built is gone: namespaces are named after its pid.
    assert not [ns for ns in netns_list() if ns.startswith(f"gp-{proc.pid}-")]
    pcap = tmp_path / "govpass-lab.pcap"
    assert pcap.is_file() and pcap.stat().st_size > 0
    flows = [f for f in analyze(pcap) if f.syn_seen and f.complete]
    # Runs without govpass send the hello whole, runs with it start with 5 bytes.
    assert any(f.sizes == [f.record_len] for f in flows), [f.summary() for f in flows]
    assert any(f.sizes[0] == 5 for f in flows), [f.summary() for f in flows]


def test_lab_command_defaults_show_what_works_and_what_to_do(tmp_path: Path) -> None:
    """Both censors, govpass's defaults: the string censor needs --split-pos midsld,
    which the lab proves; that is govpass as designed, so exit 0, no traceback."""
    proc = govpass(["lab", "--clients", "curl,python", "--family", "4"], tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "ok   censor firstpacket: blocks 2/2 without govpass; all 2 pass" in out, out
    flat = " ".join(out.split())
    assert "ok censor string: blocks 2/2 without govpass; 0/2 pass" in flat, out
    assert "all 2 pass with --split-pos midsld" in flat, out
    assert "Traceback" not in out and 'File "' not in out, out


def test_lab_command_rejects_bad_split_flag(tmp_path: Path) -> None:
    proc = govpass(["lab", "--split-chunk", "abc"], tmp_path, timeout=60)
    assert proc.returncode == 2, proc
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "split-chunk" in lines[0], proc.stderr
    assert not (tmp_path / "govpass-lab.pcap").exists()


def test_lab_command_needs_root(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from govpass.cli import main

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit) as exc:
        main(["lab", "--censor", "firstpacket"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "needs root" in lines[0], err


def test_lab_command_runs_every_censor_kind_and_says_what_no_split_beats(tmp_path: Path) -> None:
    """tspu and the split-rejecting server need another split than the default, which
    the lab proves and names; the reassembling box and the address block beat every
    split: that is reported as unfixable, not as a failure of govpass (exit 0)."""
    kinds = "tspu,reassemble,splitreject,address"
    proc = govpass(["lab", "--censor", kinds, "--clients", "curl", "--family", "4"], tmp_path)
    out = proc.stdout + proc.stderr
    flat = " ".join(out.split())
    assert proc.returncode == 0, out
    assert "FAIL" not in out and "Traceback" not in out, out
    assert "ok censor tspu: blocks 1/1 without govpass; 0/1 pass" in flat, out
    assert "all 1 pass with --split-chunk 1" in flat, out
    assert "ok censor splitreject: blocks 0/1 without govpass; 0/1 pass" in flat, out
    assert "all 1 pass with --split-chunk 8" in flat, out
    for kind in ("reassemble", "address"):
        assert (
            f"ok censor {kind}: blocks 1/1 without govpass; 0/1 pass with govpass: "
            "unfixable by splitting" in flat
        ), out
    assert "with govpass, curl" not in flat, out  # no per-connection failure lines
    assert "with govpass: 2/2 passed (2 of them with the censor's fix); 2 more" in flat, out


def test_lab_command_rejects_an_unknown_censor_in_one_line(tmp_path: Path) -> None:
    proc = govpass(["lab", "--censor", "tspu,gfw"], tmp_path, timeout=60)
    assert proc.returncode == 2, proc
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "invalid censor: 'gfw'" in lines[0] and "reassemble" in lines[0], lines
    assert not (tmp_path / "govpass-lab.pcap").exists()


def test_lab_command_beats_the_later_segment_dropper_and_names_how(tmp_path: Path) -> None:
    """The box that reads two packets and then drops the rest in silence: the default
    split loses (the name is whole in the second packet), the named fix wins."""
    argv = ["lab", "--censor", "dropsecond", "--clients", "curl", "--family", "4"]
    proc = govpass(argv, tmp_path)
    out = proc.stdout + proc.stderr
    flat = " ".join(out.split())
    assert proc.returncode == 0, out
    assert "FAIL" not in out and "Traceback" not in out, out
    assert "ok censor dropsecond: blocks 1/1 without govpass; 0/1 pass" in flat, out
    assert "all 1 pass with --split-chunk 2 --split-pos midsld" in flat, out
