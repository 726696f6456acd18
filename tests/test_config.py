"""Configuration: seed defaults < TOML file < GOVPASS_* environment < flags, every
bad value a ConfigError that names its setting, and the engine's own checks."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import pytest
from govpass import EngineConfig
from govpass.config import Config, load
from govpass.errors import ConfigError, GovpassError
from govpass.settings import BY_NAME, SETTINGS, Setting

ENGINE_NAMES = (
    "split-mode",
    "split-chunk",
    "split-pos",
    "collect-timeout",
    "max-buffer",
    "max-held-pkts",
    "max-seg-payload",
    "flow-timeout",
    "max-flows",
    "ports",
)


def toml(tmp_path: Path, text: str, name: str = "govpass.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ defaults


def test_defaults_are_the_seed_defaults() -> None:
    c = load(env={})
    assert (c.split_mode, c.split_chunk, c.split_pos) == ("tls-hello", 5, ())
    assert (c.collect_timeout, c.max_buffer, c.max_held_pkts) == (250.0, 65536, 32)
    assert (c.max_seg_payload, c.flow_timeout, c.port_numbers) == (1460, 30.0, (443,))
    assert dict(c.sources) == {}


def test_every_setting_has_a_config_field_with_the_same_default() -> None:
    fields = {
        f.name: f.default
        for f in dataclasses.fields(Config)
        if f.name not in ("sources", "profiles")
    }
    assert set(fields) == {s.attr for s in SETTINGS}
    for s in SETTINGS:
        assert fields[s.attr] == s.default, s.name
        assert s.env == "GOVPASS_" + s.name.replace("-", "_").upper()


def test_engine_config_carries_every_engine_setting() -> None:
    c = load(
        env={},
        flags={
            "split-mode": "immediate",
            "split-chunk": "9",
            "split-pos": "sni+1,midsld",
            "collect-timeout": "120",
            "max-buffer": "4096",
            "max-held-pkts": "7",
            "max-seg-payload": "1200",
            "flow-timeout": "12",
            "max-flows": "99",
            "ports": "443,8443",
        },
    )
    e = c.engine_config()
    assert isinstance(e, EngineConfig)
    assert (e.split_mode, e.split_chunk, e.split_positions) == ("immediate", 9, ["sni+1", "midsld"])
    assert (e.collect_timeout_ms, e.max_buffer, e.max_held_pkts) == (120.0, 4096, 7)
    assert (e.max_seg_payload, e.flow_timeout_s, e.max_flows, e.ports) == (
        1200,
        12.0,
        99,
        [443, 8443],
    )


# ---------------------------------------------------------------- precedence


def test_file_overrides_defaults(tmp_path: Path) -> None:
    path = toml(tmp_path, 'split-chunk = 3\nsplit-pos = ["sni", "midsld"]\nipv6 = false\n')
    c = load(file=path, env={})
    assert (c.split_chunk, c.split_pos, c.ipv6) == (3, ("sni", "midsld"), False)
    assert c.sources["split-chunk"] == f"file {path}"
    assert c.max_buffer == 65536 and "max-buffer" not in c.sources


def test_env_overrides_file_and_flags_override_env(tmp_path: Path) -> None:
    path = toml(tmp_path, "split-chunk = 3\nmax-buffer = 4096\ncollect-timeout = 100\n")
    env = {"GOVPASS_SPLIT_CHUNK": "4", "GOVPASS_MAX_BUFFER": "8192"}
    c = load(file=path, env=env)
    assert (c.split_chunk, c.max_buffer, c.collect_timeout) == (4, 8192, 100.0)
    assert c.sources["split-chunk"] == "environment"
    c = load(file=path, env=env, flags={"split-chunk": "6", "max-buffer": None})
    assert (c.split_chunk, c.max_buffer, c.collect_timeout) == (6, 8192, 100.0)
    assert c.sources["split-chunk"] == "flag"
    assert c.sources["max-buffer"] == "environment", "a flag left unset (None) does not count"
    assert c.sources["collect-timeout"] == f"file {path}"


def test_each_layer_alone_for_every_setting(tmp_path: Path) -> None:
    # A valid non-default value per kind, through each layer.
    for s in SETTINGS:
        text, typed = _good_value(s)
        via_env = load(env={s.env: text})
        via_flag = load(env={}, flags={s.name: text})
        assert getattr(via_env, s.attr) == typed, s.name
        assert getattr(via_flag, s.attr) == typed, s.name


def _good_value(s: Setting) -> tuple[str, Any]:
    if s.kind == "choice":
        choice = next(c for c in s.choices if c != s.default)
        return choice, choice
    if s.kind == "bool":
        return ("false", False) if s.default else ("true", True)
    if s.kind == "list":
        value = {
            "ports": ("8443", "443"),
            "split-pos": ("sni", "midsld+1"),
            "ips": ("203.0.113.0/24", "2001:db8::1"),
            "ips-exclude": ("203.0.113.0/24", "2001:db8::1"),
            "strategy-ladder": ("1", "2,midsld"),
        }.get(s.name, ("eth0", "wlan0"))
        return ", ".join(value), value
    if s.kind == "str":
        return "something", "something"
    if s.kind == "address":
        return " [::1]:9100", "[::1]:9100"
    lo = s.minimum if s.minimum is not None else 0
    hi = s.maximum if s.maximum is not None else lo + 1000
    number = int(hi) if s.default != int(hi) else int(lo)
    return str(number), float(number) if s.kind == "float" else number


def test_env_is_read_from_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOVPASS_SPLIT_CHUNK", "11")
    assert load().split_chunk == 11
    assert load(env={}).split_chunk == 5


def test_a_govpass_table_in_the_file_is_read(tmp_path: Path) -> None:
    path = toml(tmp_path, "[govpass]\nsplit-chunk = 2\nports = [443, 8443]\n")
    c = load(file=path, env={})
    assert c.split_chunk == 2 and c.port_numbers == (443, 8443)


def test_values_are_parsed_per_kind() -> None:
    c = load(
        env={
            "GOVPASS_MARK": "0x40000000",
            "GOVPASS_SPLIT_POS": " sni , midsld ,",
            "GOVPASS_IPV6": "off",
            "GOVPASS_COLLECT_TIMEOUT": "12.5",
        }
    )
    assert c.mark == 0x40000000
    assert c.split_pos == ("sni", "midsld")
    assert c.ipv6 is False
    assert c.collect_timeout == 12.5
    assert c.engine_config().collect_timeout_ms == 12.5


def test_flag_names_may_use_underscores() -> None:
    assert load(env={}, flags={"split_chunk": "8"}).split_chunk == 8


# ---------------------------------------------------------------- bad values


def _bad_values(s: Setting) -> list[Any]:
    if s.kind == "choice":
        return ["bogus", "", 3]
    if s.kind == "bool":
        return ["maybe", "2", 7]
    if s.kind == "list":
        bad: list[Any] = [5, {"a": 1}]
        if s.name == "ports":
            bad += ["0", "65536", "https", "443,-1"]
        if s.name == "split-pos":
            bad += ["nowhere", "0", "sni+x", "midsld*2"]
        return bad
    if s.kind == "str":
        return [True, 5, [1], {"a": 1}]
    if s.kind == "address":
        return ["on", "host:80", "1.2.3.4:0", "[::1]", "::1:80", "9100x", 0, True, 1.5, [1]]
    bad = ["abc", "", True, [1]]
    if s.minimum is not None:
        bad.append(str(s.minimum - 1))
    if s.maximum is not None:
        bad.append(str(s.maximum + 1))
        bad.append("inf")
    if s.kind == "int":
        bad += ["1.5", 2.5]
    return bad


@pytest.mark.parametrize("setting", SETTINGS, ids=[s.name for s in SETTINGS])
def test_every_bad_value_names_its_setting(setting: Setting, tmp_path: Path) -> None:
    for value in _bad_values(setting):
        for layer in ("flag", "env", "file"):
            if layer == "env" and not isinstance(value, str):
                continue
            with pytest.raises(ConfigError) as e:
                if layer == "flag":
                    load(env={}, flags={setting.name: value})
                elif layer == "env":
                    load(env={setting.env: value})
                else:
                    load(file=toml(tmp_path, _toml_line(setting.name, value)), env={})
            assert e.value.field == setting.name, (layer, value, str(e.value))
            assert setting.name in str(e.value)
            assert "accepted" in str(e.value), str(e.value)


def _toml_line(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"{name} = {str(value).lower()}"
    if isinstance(value, str):
        return f'{name} = "{value}"'
    if isinstance(value, dict):
        return f"{name} = {{ a = 1 }}"
    return f"{name} = {value!r}"


@pytest.mark.parametrize("name", [s.name for s in SETTINGS if s.kind == "float"])
def test_nan_is_not_a_number_setting_value(name: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(env={}, flags={name: "nan"})
    assert e.value.field == name


def test_chunk_zero_needs_positions() -> None:
    with pytest.raises(ConfigError) as e:
        load(env={}, flags={"split-chunk": "0"})
    assert e.value.field == "split-chunk"
    assert load(env={}, flags={"split-chunk": "0", "split-pos": "sni"}).split_chunk == 0


def test_empty_port_list_is_refused() -> None:
    with pytest.raises(ConfigError) as e:
        load(env={}, flags={"ports": ""})
    assert e.value.field == "ports"


def test_config_error_is_a_govpass_error_and_a_value_error() -> None:
    with pytest.raises(ConfigError) as e:
        load(env={}, flags={"max-held-pkts": "0"})
    assert isinstance(e.value, GovpassError) and isinstance(e.value, ValueError)


# ------------------------------------------------------------------- files


def test_unknown_toml_key(tmp_path: Path) -> None:
    path = toml(tmp_path, "split-chunk = 3\nsplit-chunck = 4\n")
    with pytest.raises(ConfigError) as e:
        load(file=path, env={})
    assert e.value.field == "split-chunck"
    assert "split-chunck" in str(e.value) and str(path) in str(e.value)
    assert "split-chunk" in str(e.value), "the message lists what is accepted"


def test_unknown_key_in_the_govpass_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load(file=toml(tmp_path, "[govpass]\nbogus = 1\n"), env={})
    assert e.value.field == "bogus"


def test_unknown_flag_name() -> None:
    with pytest.raises(ConfigError) as e:
        load(env={}, flags={"split-chonk": "3"})
    assert e.value.field == "split-chonk"


@pytest.mark.parametrize(
    "text", ["split-chunk = \n", "split-chunk = [\n", "[govpass\n", "a = 1\na = 2\n", "x = 'y\n"]
)
def test_invalid_toml(tmp_path: Path, text: str) -> None:
    path = toml(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load(file=path, env={})
    assert e.value.field == "config"
    assert "not valid TOML" in str(e.value) and str(path) in str(e.value)


def test_missing_or_unreadable_config_file(tmp_path: Path) -> None:
    for path in (tmp_path / "absent.toml", tmp_path):
        with pytest.raises(ConfigError) as e:
            load(file=path, env={})
        assert e.value.field == "config"
        assert str(path) in str(e.value)


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# r\xe9glages\nsplit-chunk = 3\n")
    with pytest.raises(ConfigError) as e:
        load(file=path, env={})
    assert e.value.field == "config"


def test_govpass_key_that_is_not_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load(file=toml(tmp_path, "govpass = 5\n"), env={})
    assert e.value.field is not None


# ---------------------------------------------------------- EngineConfig itself


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ports": []}, "ports"),
        ({"ports": [0]}, "ports"),
        ({"ports": [65536]}, "ports"),
        ({"split_mode": "later"}, "split-mode"),
        ({"split_chunk": -1}, "split-chunk"),
        ({"split_chunk": 16385}, "split-chunk"),
        ({"split_chunk": 0}, "split-chunk"),
        ({"split_positions": ["here"]}, "split-pos"),
        ({"split_positions": ["0"]}, "split-pos"),
        ({"split_positions": ["sni"] * 65}, "split-pos"),
        ({"collect_timeout_ms": 0.5}, "collect-timeout"),
        ({"collect_timeout_ms": 60001}, "collect-timeout"),
        ({"collect_timeout_ms": math.nan}, "collect-timeout"),
        ({"collect_timeout_ms": -1}, "collect-timeout"),
        ({"max_buffer": 63}, "max-buffer"),
        ({"max_buffer": 16 * 1024 * 1024 + 1}, "max-buffer"),
        ({"max_held_pkts": 0}, "max-held-pkts"),
        ({"max_held_pkts": 4097}, "max-held-pkts"),
        ({"max_seg_payload": 0}, "max-seg-payload"),
        ({"max_seg_payload": 65476}, "max-seg-payload"),
        ({"flow_timeout_s": 0.5}, "flow-timeout"),
        ({"flow_timeout_s": math.inf}, "flow-timeout"),
        ({"max_flows": 0}, "max-flows"),
        ({"max_flows": -5}, "max-flows"),
        ({"auto_silence_s": 0.4}, "auto-silence"),
        ({"auto_silence_s": 600.5}, "auto-silence"),
        ({"auto_silence_s": -1}, "auto-silence"),
        ({"auto_silence_s": math.nan}, "auto-silence"),
    ],
)
def test_engine_config_errors_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as e:
        EngineConfig(**kwargs)
    assert e.value.field == field
    assert "accepted" in str(e.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"split_chunk": 0, "split_positions": ["midsld"]},
        {"split_chunk": 16384},
        {"collect_timeout_ms": 1, "flow_timeout_s": 1},
        {"max_buffer": 64, "max_held_pkts": 1, "max_seg_payload": 1, "max_flows": 1},
        {"max_seg_payload": 65475, "max_held_pkts": 4096, "max_buffer": 16 * 1024 * 1024},
        {"split_positions": ["sni"] * 64},
        {"ports": [1, 65535]},
        {"auto_silence_s": 0},
        {"auto_silence_s": 0.5, "flow_timeout_s": 1},
        {"auto_silence_s": 600},
    ],
)
def test_engine_config_accepts_its_boundaries(kwargs: dict[str, Any]) -> None:
    EngineConfig(**kwargs)


def test_engine_config_is_keyword_only_and_typed() -> None:
    with pytest.raises(TypeError):
        EngineConfig(5)  # type: ignore[misc]
    with pytest.raises(TypeError):
        EngineConfig(split_chunk="5")  # type: ignore[arg-type]


def test_config_and_engine_agree_on_engine_limits() -> None:
    # The config table's ranges are the engine's: a value at each end passes both.
    for name in ENGINE_NAMES:
        s = BY_NAME[name]
        for bound in (s.minimum, s.maximum):
            if bound is None or s.kind not in ("int", "float"):
                continue
            flags = {name: str(int(bound) if s.kind == "int" else bound)}
            if name == "split-chunk" and bound == 0:
                flags["split-pos"] = "sni"
            load(env={}, flags=flags).engine_config()


# ------------------------------------------------------------------ where a value came from


def test_an_environment_error_names_the_variable() -> None:
    with pytest.raises(ConfigError) as e:
        load(env={"GOVPASS_SPLIT_CHUNK": "abc"})
    assert str(e.value) == (
        "invalid GOVPASS_SPLIT_CHUNK (split-chunk): 'abc' (accepted: an integer in 0..=16384)"
    )
    with pytest.raises(ConfigError, match=r"^invalid GOVPASS_SPLIT_POS \(split-pos\): "):
        load(env={"GOVPASS_SPLIT_POS": "sni--5"})  # the engine's check, same naming
    with pytest.raises(ConfigError, match=r"^invalid GOVPASS_PORTS \(ports\): 'https'"):
        load(env={"GOVPASS_PORTS": "https"})


def test_a_file_error_names_the_file(tmp_path: Path) -> None:
    path = toml(tmp_path, "max-flows = -inf\n")
    with pytest.raises(ConfigError) as e:
        load(file=path, env={})
    assert str(e.value).startswith(f"invalid max-flows in {path}: -inf (accepted: an integer")


@pytest.mark.parametrize(
    "line",
    [
        "split-chunk = inf",
        "split-chunk = nan",
        "split-chunk = 5.0",
        "split-chunk = true",
        "split-chunk = [5]",
        "ports = [true]",
        "ports = [443.0]",
        'mode = ["host"]',
        "ipv6 = 0.5",
        'pf-anchor = "a\\u001bb"',
        "max-flows = 99999999999999999999999999",
    ],
)
def test_wrong_toml_types_are_refused(tmp_path: Path, line: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(file=toml(tmp_path, line + "\n"), env={})
    assert "accepted" in str(e.value) and "\x1b" not in str(e.value)


@pytest.mark.linux_only  # os.mkfifo
def test_deep_nesting_and_fifo_config(tmp_path: Path) -> None:
    deep = toml(tmp_path, "a = " + "[" * 100000 + "]" * 100000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load(file=deep, env={})
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="a FIFO"):
        load(file=fifo, env={})


def test_a_long_value_is_cut_in_the_message() -> None:
    with pytest.raises(ConfigError) as e:
        load(env={}, flags={"mode": "x" * 1_000_000})
    assert len(str(e.value)) < 200 and "(1000000 characters)" in str(e.value)


def test_auto_silence_is_a_setting_in_seconds() -> None:
    assert load(env={}, flags={}).engine_config().auto_silence_s == 4.0
    config = load(env={}, flags={"auto-silence": "1.5"})
    assert config.engine_config().auto_silence_s == 1.5
    with pytest.raises(ConfigError) as e:
        load(env={}, flags={"auto-silence": "0.2"})
    assert "auto-silence" in str(e.value) and "0 (off) or 0.5..=600 s" in str(e.value)


# ------------------------------------------------------------------ strategy auto


def _specs(path: Path, **flags: Any) -> Any:
    from govpass.targeting import specs_from_config

    return specs_from_config(load(file=path, env={}, flags=flags))


def test_a_profile_may_say_strategy_auto_and_others_stay_fixed(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        '[[profile]]\nname = "ru"\nhosts = ["blocked.example"]\nstrategy = "auto"\n'
        'split-chunk = 2\n[[profile]]\nname = "rest"\nsplit-chunk = 3\n',
    )
    ru, rest = _specs(path)
    assert (ru.strategy, ru.state_key, ru.split_chunk) == ("auto", "ru", 2)
    assert ru.learns and not rest.learns and rest.state_key == ""


def test_the_global_strategy_is_the_default_of_split_profiles_only(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        'strategy = "auto"\n[[profile]]\nname = "a"\nhosts = ["x.example"]\n'
        '[[profile]]\nname = "b"\nstrategy = "fixed"\n[[profile]]\nname = "c"\naction = "pass"\n',
    )
    a, b, c = _specs(path)
    assert [a.learns, b.learns, c.learns] == [True, False, False]


def test_strategy_auto_with_a_host_list_learns_for_the_listed_names(tmp_path: Path) -> None:
    listed, other = _specs(toml(tmp_path, ""), strategy="auto", hosts="blocked.example")
    assert listed.learns and listed.state_key == "" and listed.hosts == ("blocked.example",)
    assert other.action == "pass" and not other.learns


@pytest.mark.parametrize(
    ("text", "flags", "expect"),
    [
        (
            '[[profile]]\nname = "a"\nstrategy = "adaptive"\n',
            {},
            "invalid [[profile]] 'a': strategy: 'adaptive' (accepted: fixed, auto)",
        ),
        ('[[profile]]\nname = "a"\nstrategy = 1\n', {}, "(accepted: fixed, auto)"),
        (
            '[[profile]]\nname = "a"\naction = "pass"\nstrategy = "auto"\n',
            {},
            "[[profile]] 'a': strategy = auto needs action = split",
        ),
        (
            '[[profile]]\nname = "a"\nstrategy = "auto"\nauto = "learned.txt"\n',
            {},
            "[[profile]] 'a': auto (an auto host list) cannot be combined with strategy = auto "
            "(from its strategy key)",
        ),
        (
            'strategy = "auto"\n[[profile]]\nname = "a"\nauto = "learned.txt"\n',
            {},
            "(from the global strategy setting)",
        ),
        ("", {"strategy": "auto", "hostlist-auto": "learned.txt"}, "hostlist-auto"),
        ('[[profile]]\nname = "a"\nstrategy = "auto"\n', {"strategy-state": " "}, "strategy-state"),
    ],
)
def test_strategy_auto_refusals_are_one_line_naming_the_setting(
    tmp_path: Path, text: str, flags: dict[str, str], expect: str
) -> None:
    with pytest.raises(ConfigError) as e:
        load(file=toml(tmp_path, text), env={}, flags=flags)
    msg = str(e.value)
    assert expect in msg and "accepted" in msg and "\n" not in msg, msg
    assert e.value.field in ("strategy", "strategy-state"), e.value.field
