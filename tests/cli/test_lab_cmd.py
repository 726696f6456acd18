"""`govpass lab`'s verdicts: what works, what to do, and when that is a failure."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from govpass.cli.lab_cmd import FIXES, UNFIXABLE, Cell, _verdict, censors_of
from govpass.errors import ConfigError
from govpass.lab import CENSOR_KINDS
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


def test_every_censor_kind_of_the_lab_has_an_expectation() -> None:
    """A kind the lab gains without the lab command knowing what beats it would be
    reported as a failure of govpass."""
    known = {"firstpacket", *FIXES, *UNFIXABLE}
    assert set(CENSOR_KINDS) <= known, set(CENSOR_KINDS) - known


def test_censor_option_takes_kinds_lists_and_both() -> None:
    assert censors_of("both") == ["firstpacket", "string"]
    assert censors_of("") == ["firstpacket", "string"]
    assert censors_of("tspu") == ["tspu"]
    assert censors_of("tspu, reassemble,tspu,both") == [
        "tspu",
        "reassemble",
        "firstpacket",
        "string",
    ]
    for kind in CENSOR_KINDS:
        assert censors_of(kind) == [kind]


def test_unknown_censor_is_one_line_naming_the_accepted_kinds() -> None:
    with pytest.raises(ConfigError) as info:
        censors_of("tspu,gfw")
    msg = str(info.value)
    assert info.value.field == "censor" and "\n" not in msg
    assert msg.startswith("invalid censor: 'gfw' (accepted: ")
    assert all(kind in msg for kind in CENSOR_KINDS)


@pytest.mark.parametrize("kind", sorted(UNFIXABLE))
def test_a_censor_no_split_beats_is_reported_as_unfixable_not_as_a_failure(kind: str) -> None:
    ok, text = _verdict(kind, row(kind, BLOCKED, None), "default split")
    assert ok, text
    assert "0/2 pass with govpass: unfixable by splitting" in text
    # ...and govpass passing one would be a surprise worth a FAIL.
    assert not _verdict(kind, row(kind, OK, None), "default split")[0]


@pytest.mark.parametrize(
    ("kind", "fix"), [("tspu", "--split-chunk 1"), ("splitreject", "--split-chunk 8")]
)
def test_censors_the_default_does_not_beat_name_their_fix(kind: str, fix: str) -> None:
    ok, text = _verdict(kind, row(kind, BLOCKED, OK), "default split")
    assert ok and f"all 2 pass with {fix}" in text, text
    assert not _verdict(kind, row(kind, BLOCKED, BLOCKED), "default split")[0]


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
