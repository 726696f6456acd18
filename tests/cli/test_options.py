"""`govpass --version` and `govpass run --help`: panels, the platform's own options."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version

import pytest
from govpass.cli.options import PANELS, hidden_here
from govpass.settings import SETTINGS


def govpass(*args: str, columns: int = 100, **env: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "govpass", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": str(columns), "GOVPASS_HELP_ALL": "", **env},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_version_comes_from_the_package_metadata() -> None:
    assert govpass("--version") == f"govpass {version('govpass')}\n"


def test_every_setting_has_a_panel() -> None:
    assert {s.name for s in SETTINGS} == {n for names in PANELS.values() for n in names}


@pytest.mark.parametrize(
    ("platform", "hidden", "shown"),
    [
        ("linux", "ipfw-rule", "kernel-split"),
        ("freebsd14", "kernel-split", "pf-anchor"),
        ("win32", "pf-anchor", "queue-time"),
    ],
)
def test_each_platform_hides_the_others_options(platform: str, hidden: str, shown: str) -> None:
    assert hidden_here(hidden, platform) and not hidden_here(shown, platform)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's own options")
def test_run_help_is_grouped_and_shows_linux_options() -> None:
    text = govpass("run", "--help")
    for panel in ("Splitting", "Targeting", "Capture & rules", "Workers & kernel", "Limits"):
        assert f" {panel} " in text
    assert "--kernel-split" in text and "--ipfw-rule" not in text and "--pf-anchor" not in text
    assert "--help-all" in text  # says how to see the rest
    assert len(text.splitlines()) < 181  # was 241 at 100 columns (179 with --metrics)
    for every in (govpass("run", "--help-all"), govpass("run", "--help", GOVPASS_HELP_ALL="1")):
        assert "--ipfw-rule" in every and "--pf-anchor" in every


@pytest.mark.parametrize("columns", [80, 100])
def test_no_choice_is_cut_mid_word(columns: int) -> None:
    text = govpass("run", "--help-all", columns=columns)
    flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())
    for s in SETTINGS:
        for choice in s.choices:
            assert re.search(rf"(?<![\w-]){re.escape(choice)}(?![\w-])", flat), (s.name, choice)
        if s.kind == "choice":
            assert f"one of {', '.join(s.choices)};" in flat, s.name
