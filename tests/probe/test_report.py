"""Report output: JSON shape, escaping of hostile text, exit codes, the table."""

from __future__ import annotations

import json

from govpass.probe.report import as_json, escape, exit_code, json_lines, table, verdict_lines
from govpass.probe.search import FIXED, OK, UNFIXABLE, HostResult, Tried
from govpass.strategy import Strategy
from rich.console import Console


def _fixed() -> HostResult:
    r = HostResult("blocked.example", "203.0.113.2", FIXED, Strategy(1), "blocked by name")
    r.tried = [Tried(Strategy(1), "works", "ok")]
    r.step("unsplit", "blocked by name")
    return r


def test_json_shape() -> None:
    rec = json.loads(json_lines([_fixed()]))
    assert rec["host"] == "blocked.example"
    assert rec["verdict"] == "fixed"
    assert rec["strategy"] == "--split-chunk 1"
    assert rec["reason"] == "blocked by name"
    assert rec["tried"] == [
        {"strategy": "--split-chunk 1", "label": "1", "result": "works", "detail": "ok"}
    ]
    assert as_json(HostResult("a.example", None, UNFIXABLE))["strategy"] == ""


def test_hostile_text_is_escaped() -> None:
    assert escape("a\x1b[31mb\r\n\x00") == "a\\x1b[31mb\\x0d\\x0a\\x00"
    assert escape("\u202eevil") == "\\u202eevil"
    assert len(escape("x" * 500)) == 200
    r = HostResult("h.example", "203.0.113.2", UNFIXABLE, None, "not TLS: b'\x1b]0;pwn\x07'")
    r.step("unsplit", "[bold red]markup[/] \x1b[2J")
    console = Console(record=True, width=200, force_terminal=True, color_system=None)
    console.print(table([r]))
    out = console.export_text()
    assert "\x1b" not in out and "\x07" not in out
    assert "[bold red]markup[/]" in out  # shown as text, not interpreted
    assert "\x1b" not in json_lines([r]) and "\x1b" not in "".join(verdict_lines([r]))


def test_exit_code() -> None:
    ok = HostResult("a.example", "203.0.113.2", OK)
    bad = HostResult("b.example", "203.0.113.2", UNFIXABLE)
    assert exit_code([ok, _fixed()]) == 0
    assert exit_code([ok, bad]) == 1
    assert exit_code([]) == 1
