"""Strategy values: parsing with the settings' rules, printing as flags and keys."""

from __future__ import annotations

import pytest
from govpass.config import load as load_config
from govpass.errors import ConfigError
from govpass.settings import BY_NAME
from govpass.strategy import DEFAULT, DEFAULT_LADDER, Strategy, ladder


@pytest.mark.parametrize(
    ("text", "chunk", "positions", "flags"),
    [
        ("1", 1, (), "--split-chunk 1"),
        ("2,midsld", 2, ("midsld",), "--split-chunk 2 --split-pos midsld"),
        ("1,sni+1", 1, ("sni+1",), "--split-chunk 1 --split-pos sni+1"),
        ("midsld", 0, ("midsld",), "--split-chunk 0 --split-pos midsld"),
        (" sni , sniend ", 0, ("sni", "sniend"), "--split-chunk 0 --split-pos sni,sniend"),
    ],
)
def test_text_form(text: str, chunk: int, positions: tuple[str, ...], flags: str) -> None:
    s = Strategy.from_text(text)
    assert (s.chunk, s.positions, s.flags) == (chunk, positions, flags)
    assert Strategy.from_text(s.label) == s


@pytest.mark.parametrize("text", ["", ",", "bogus", "1,sni+x", "99999", "0"])
def test_bad_text_is_one_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        Strategy.from_text(text)


def test_parse_uses_the_settings_rules() -> None:
    assert Strategy.parse("0x2", "sni+1,midsld") == Strategy(2, ("sni+1", "midsld"))
    with pytest.raises(ConfigError, match="split-chunk"):
        Strategy.parse(-1)
    with pytest.raises(ConfigError, match="split-pos"):
        Strategy.parse(1, ["nowhere"])


def test_flags_are_what_run_accepts(tmp_path: object) -> None:
    for s in DEFAULT_LADDER:
        argv = s.argv()
        flags = {argv[i].lstrip("-"): argv[i + 1] for i in range(0, len(argv), 2)}
        config = load_config(None, env={}, flags=flags)
        assert (config.split_chunk, config.split_pos) == (s.chunk, s.positions)


def test_profile_keys() -> None:
    assert Strategy(1).profile_keys() == {"split-chunk": 1}
    assert Strategy(2, ("midsld",)).profile_keys() == {"split-chunk": 2, "split-pos": ["midsld"]}


def test_default_ladder_cheapest_first_and_complete() -> None:
    labels = [s.label for s in DEFAULT_LADDER]
    assert labels[:4] == ["1", "2", "5", "8"]
    for needed in ("sni", "midsld", "sniend", "2,midsld", "1,sni+1"):
        assert needed in labels
    assert len(set(DEFAULT_LADDER)) == len(DEFAULT_LADDER)
    assert ladder(["1", "1", "2"]) == (Strategy(1), Strategy(2))


def test_default_is_runs_default() -> None:
    assert DEFAULT.chunk == BY_NAME["split-chunk"].default
    assert DEFAULT.positions == ()
