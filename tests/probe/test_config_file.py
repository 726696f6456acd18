"""--write-config: a file run takes as is, written atomically and never via a symlink."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from govpass import config as config_mod
from govpass.errors import ConfigError
from govpass.probe.config_file import render, write_atomic
from govpass.probe.search import FIXED, OK, UNFIXABLE, HostResult
from govpass.strategy import Strategy
from govpass.targeting import specs_from_config


def _results() -> list[HostResult]:
    return [
        HostResult("blocked.example", "203.0.113.2", FIXED, Strategy(2, ("midsld",))),
        HostResult("tspu.example", "203.0.113.2", FIXED, Strategy(1)),
        HostResult("fine.example", "203.0.113.2", OK),
        HostResult("gone.example", "203.0.113.3", UNFIXABLE),
    ]


def test_run_loads_it_as_is(tmp_path: Path) -> None:
    path = tmp_path / "probe.toml"
    write_atomic(path, render(_results()))
    config = config_mod.load(path, env={})
    specs = specs_from_config(config)
    assert [(s.name, s.hosts, s.split_chunk, s.split_pos, s.action) for s in specs] == [
        ("probe-blocked.example", ("blocked.example",), 2, ("midsld",), "split"),
        ("probe-tspu.example", ("tspu.example",), 1, (), "split"),
        ("probe-fine.example", ("fine.example",), config.split_chunk, (), "pass"),
        ("default", (), config.split_chunk, (), "split"),  # catch-all keeps the default
    ]


def test_nothing_fixed_still_a_valid_config(tmp_path: Path) -> None:
    path = tmp_path / "probe.toml"
    write_atomic(path, render(_results()[3:]))
    assert [s.name for s in specs_from_config(config_mod.load(path, env={}))] == ["default"]


def test_mode_0644_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "probe.toml"
    path.write_text("old")
    old = os.umask(0o077)
    try:
        write_atomic(path, "new\n")
    finally:
        os.umask(old)
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["probe.toml"]  # no temp file left


def test_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "probe.toml"
    link.symlink_to(victim)
    write_atomic(link, "x = 1\n")
    assert victim.read_text() == "keep"
    assert not link.is_symlink() and link.read_text() == "x = 1\n"


def test_unwritable_place_is_one_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="write-config"):
        write_atomic(tmp_path / "missing-dir" / "probe.toml", "")
    with pytest.raises(ConfigError, match="is a directory"):
        write_atomic(tmp_path, "")


def test_hostile_names_never_reach_the_file() -> None:
    bad = HostResult('x"]\n[govpass]\nmark = 1 #', "203.0.113.2", FIXED, Strategy(1))
    text = render([bad])
    assert "[govpass]" not in text and "mark" not in text
