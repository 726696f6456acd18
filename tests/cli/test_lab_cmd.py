"""`govpass lab`'s verdicts: what works, what to do, and when that is a failure."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

from govpass.cli.lab_cmd import Cell, _verdict
from govpass.lab.clients import _PY_CLIENT
from govpass.lab.server import make_cert

BLOCKED, OK = (False, "rc=28 timed out"), (True, "HTTP 200")


def row(censor: str, with_: tuple[bool, str], fix: tuple[bool, str] | None) -> list[Cell]:
    return [Cell(censor, "curl", f, without=BLOCKED, with_=with_, fix=fix) for f in (4, 6)]


def test_the_default_split_passing_is_as_designed() -> None:
    ok, text = _verdict("firstpacket", row("firstpacket", OK, None), "default split")
    assert ok and text == (
        "censor firstpacket: blocks 2/2 without govpass; all 2 pass with govpass (default split)"
    )


def test_the_string_censor_needing_midsld_is_as_designed_and_says_so() -> None:
    ok, text = _verdict("string", row("string", BLOCKED, OK), "default split")
    assert ok
    assert "0/2 pass with govpass (default split)" in text
    assert "all 2 pass with --split-pos midsld" in text


def test_a_censor_that_beats_govpass_is_a_failure() -> None:
    assert not _verdict("string", row("string", BLOCKED, BLOCKED), "default split")[0]
    assert not _verdict("firstpacket", row("firstpacket", BLOCKED, OK), "default split")[0]
    assert not _verdict("string", row("string", BLOCKED, None), "--split-chunk 3")[0]


def test_the_python_client_fails_in_one_line(tmp_path: Path) -> None:
    """A blocked connection (here: refused, on loopback) is one line, no traceback."""
    cert, _key = make_cert(tmp_path, ["blocked.example"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once it is closed
    argv = [sys.executable, "-c", _PY_CLIENT, "blocked.example", "127.0.0.1", str(port)]
    proc = subprocess.run([*argv, str(cert), "2"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    # refused, or unreachable where loopback is down (a bare network namespace)
    assert re.match(r"python: (ConnectionRefusedError|OSError): ", proc.stderr), proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
