"""`govpass doctor --json`: the schema (keys, types, statuses), the escaping of
hostile strings, and the exit status it shares with the text mode."""

from __future__ import annotations

import json

import pytest
from govpass import doctor
from govpass.cli import main
from govpass.doctor import Check
from govpass.doctor_json import KEYS, document, exit_status

HOSTILE = "eth0\x1b[31m\r\nfake: ok\x00\u202etxt\u200b\x7f\udcff\U0001f600"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    try:
        main(["doctor", *args])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().out


def test_each_check_is_an_object_with_exactly_the_documented_keys() -> None:
    results = [
        Check("privileges", "ok", "running as root"),
        Check("offload eth0", "warn", "tso=on", "ethtool -K eth0 tso off"),
        Check("nfqueue", "fail", "no module"),
    ]
    rows = json.loads(document(results))
    assert isinstance(rows, list) and len(rows) == 3
    for row, check in zip(rows, results, strict=True):
        assert tuple(row) == KEYS == ("name", "status", "detail", "fix")
        assert all(isinstance(v, str) for v in row.values())
        assert row == {
            "name": check.name,
            "status": check.status,
            "detail": check.detail,
            "fix": check.fix,
        }
    assert rows[0]["fix"] == ""


def test_hostile_strings_come_out_escaped_ascii_json() -> None:
    text = document([Check(HOSTILE, "warn", HOSTILE, HOSTILE)])
    assert text.isascii()
    # Line breaks only from the indentation, no other control character anywhere.
    assert not [c for c in text if ord(c) < 0x20 and c != "\n"]
    assert all(line.startswith(("[", "]", " ")) for line in text.splitlines())
    assert "\\u001b" in text and "\\r\\n" in text and "\\u0000" in text and "\\u202e" in text
    (row,) = json.loads(text)
    for key in ("name", "detail", "fix"):
        value = row[key]
        value.encode("utf-8")  # no lone surrogate: strict readers take it
        assert value == HOSTILE.replace("\udcff", "\\udcff")


@pytest.mark.parametrize(
    ("statuses", "code"),
    [((), 0), (("ok",), 0), (("ok", "warn"), 0), (("warn", "fail", "ok"), 1), (("fail",), 1)],
)
def test_json_and_text_share_the_exit_status(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    statuses: tuple[doctor.Status, ...],
    code: int,
) -> None:
    results = [Check(f"check {n}", s, f"detail {n}") for n, s in enumerate(statuses)]
    assert exit_status(results) == code
    monkeypatch.setattr(doctor, "run_checks", lambda config: results)
    json_code, out = run(capsys, "--json")
    assert json_code == code
    assert [r["status"] for r in json.loads(out)] == list(statuses)
    text_code, out = run(capsys)
    assert text_code == code
    assert len(out.splitlines()) == len(statuses)


def test_a_real_run_has_the_text_modes_checks_in_its_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    json_code, out = run(capsys, "--json")
    rows = json.loads(out)
    text_code, text = run(capsys)
    marks = {"ok": "ok", "warn": "warn", "fail": "FAIL"}
    assert [marks[r["status"]] for r in rows] == [line.split()[0] for line in text.splitlines()]
    for row, line in zip(rows, text.splitlines(), strict=True):
        assert line.split(maxsplit=1)[1].startswith(row["name"] + ": "), (row, line)
    assert rows and json_code == text_code == exit_status(
        [Check(r["name"], r["status"], r["detail"], r["fix"]) for r in rows]
    )
