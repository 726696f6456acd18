"""Untrusted text made safe: host names for learning, escaping for logs and terminals."""

from __future__ import annotations

import pytest
from govpass.safetext import ELLIPSIS, host_name, markup, quoted, text
from rich.console import Console


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("example.com", "example.com"),
        ("Blocked.Example.", "blocked.example"),
        ("a-b.c0.example", "a-b.c0.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("localhost", "localhost"),
        ("a" * 63 + ".example", "a" * 63 + ".example"),
        (".".join(["a" * 63] * 3 + ["b" * 61]), ".".join(["a" * 63] * 3 + ["b" * 61])),  # 253
    ],
)
def test_host_names_are_accepted_lower_cased(raw: str, name: str) -> None:
    assert host_name(raw) == name


@pytest.mark.parametrize(
    "raw",
    [
        "",
        ".",
        "example..com",
        ".example.com",
        "example.com..",
        "-a.example",
        "a-.example",
        "a_b.example",
        "a b.example",
        "a" * 64 + ".example",
        ".".join(["a" * 63] * 3 + ["b" * 62]),  # 254
        "bücher.example",
        "a.example\n",
        "victim.example#\x1b]0;x\x07\nbad entry\n^bank.example",
        "^exact.example",
        "*.example",
        "a.example/path",
        "a.example\x00",
        "\uff41.example",  # fullwidth letter: not ASCII
    ],
)
def test_anything_else_is_not_a_host_name(raw: str) -> None:
    assert host_name(raw) is None


def test_controls_bidi_and_invisibles_are_escaped() -> None:
    raw = "a\x1b[31mb\rc\nd\x7fe\x85f\u202eg\u200bh\u2028i\ud800j\U000e0001k\u00a0l m\\n"
    assert text(raw) == (
        "a\\x1b[31mb\\x0dc\\x0ad\\x7fe\\x85f\\u202eg\\u200bh\\u2028i\\ud800j\\U000e0001k\\xa0l m\\n"
    )


def test_printable_text_and_backslashes_are_kept_so_escaping_twice_changes_nothing() -> None:
    once = text("naïve café \\x1b 日本 \x1b")
    assert once == "naïve café \\x1b 日本 \\x1b"
    assert text(once) == once


def test_length_is_bounded_with_whole_escapes_and_an_ellipsis() -> None:
    assert text("abc", 3) == "abc"
    assert text("abcd", 3) == "ab" + ELLIPSIS
    assert text("a\x1bbc", 4) == "a" + ELLIPSIS, "an escape is never cut in half"
    long = text("x" * 10_000_000, 200)
    assert len(long) == 200 and long.endswith(ELLIPSIS)
    assert text(12345) == "12345"


def test_markup_cannot_style_or_hide_a_cell() -> None:
    console = Console(width=200, color_system=None, record=True)
    console.print(markup("[bold red]evil[/] \x1b]0;title\x07"))
    out = console.export_text()
    assert out.strip() == "[bold red]evil[/] \\x1b]0;title\\x07"


def test_quoted_names_the_value() -> None:
    assert quoted("bad\nname") == '"bad\\x0aname"'
