"""The live table and the status line: strings from state files are shown escaped,
never as markup or terminal controls; counters that are not numbers show as 0."""

from __future__ import annotations

from govpass.runtime.status import line, table
from rich.console import Console

HOSTILE = "[red]x[/red]\x1b]0;pwned\x07\nforged"


def test_the_table_shows_hostile_strings_escaped() -> None:
    stats = {
        "flows": 3,
        "splits": "many",
        "fail_open": {HOSTILE: 2},
        "kernel_split_state": HOSTILE,
        "auto_rejected": 4,
    }
    console = Console(width=200, record=True, color_system="truecolor", force_terminal=True)
    console.print(table(stats))
    raw = console.export_text(styles=False)
    assert "\x07" not in raw and "]0;" not in raw.replace("\\x1b]0;", "")
    assert "[red]x[/red]\\x1b]0;pwned\\x07\\x0aforged" in raw
    assert "auto: names refused (not host names)" in raw
    text = line(stats)
    assert "\n" not in text and "\x1b" not in text
    assert "splits=0" in text


def test_the_table_shows_hosts_per_strategy_escaped() -> None:
    stats = {"flows": 1, "strategy_hosts": 3, "strategy_counts": {"1": 2, HOSTILE: "x"}}
    console = Console(width=200, record=True, color_system="truecolor", force_terminal=True)
    console.print(table(stats))
    raw = console.export_text(styles=False)
    assert "strategy auto: hosts known" in raw
    assert "strategy auto: hosts at 1" in raw
    assert "\x07" not in raw and "[red]x[/red]" in raw


def test_the_table_names_the_profile_of_each_strategy_count() -> None:
    stats = {"flows": 1, "strategy_counts": {"ru:1": 2, "eu:none": 1, "2": 1}}
    console = Console(width=200, record=True, color_system="truecolor", force_terminal=True)
    console.print(table(stats))
    raw = console.export_text(styles=False)
    assert "strategy auto (profile ru): hosts at 1" in raw
    assert "strategy auto (profile eu): hosts at none" in raw
    assert "strategy auto: hosts at 2" in raw
