"""The daemon's configuration: seed defaults < TOML file < environment < flags.

Every setting has one spelling (``split-chunk``) used as the TOML key, the CLI
flag (``--split-chunk``) and, upper-cased with ``GOVPASS_`` in front and
dashes as underscores, the environment variable (``GOVPASS_SPLIT_CHUNK``).
Values are checked once, here and in the engine; an error names the setting
and what it accepts.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from govpass._core import EngineConfig
from govpass.errors import ConfigError
from govpass.quoting import escape_text, kind_of, quote
from govpass.reading import read_bounded
from govpass.reading import shown as _shown
from govpass.settings import (
    BY_NAME,
    MIN_WORKER_TIMEOUT,
    SETTINGS,
    BackendChoice,
    BsdFirewallChoice,
    FirewallChoice,
    Inject,
    KernelSplit,
    Mode,
    PacketLoop,
    PrefilterChoice,
    QuicBlock,
    Setting,
    SplitMode,
    StrategyMode,
    WorkerSched,
    cpu_count,
)
from govpass.strategy import ladder
from govpass.targeting import Targeting

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

PROFILE_KEY = "profile"  # [[profile]] tables: see govpass.targeting


def _default(name: str) -> Any:
    """A Config field's default: the setting's own (govpass.settings), stated once."""
    return BY_NAME[name].default


@dataclass(frozen=True)
class Config:
    """Typed, validated settings. Build with :func:`load`."""

    split_mode: SplitMode = _default("split-mode")
    split_chunk: int = _default("split-chunk")
    split_pos: tuple[str, ...] = _default("split-pos")
    collect_timeout: float = _default("collect-timeout")
    max_buffer: int = _default("max-buffer")
    max_held_pkts: int = _default("max-held-pkts")
    max_seg_payload: int = _default("max-seg-payload")
    flow_timeout: float = _default("flow-timeout")
    max_flows: int = _default("max-flows")
    ports: tuple[str, ...] = _default("ports")
    backend: BackendChoice = _default("backend")
    workers: int = _default("workers")
    worker_sched: WorkerSched = _default("worker-sched")
    user: str = _default("user")
    worker_timeout: float = _default("worker-timeout")
    packet_loop: PacketLoop = _default("packet-loop")
    inject: Inject = _default("inject")
    kernel_split: KernelSplit = _default("kernel-split")
    queue_num: int = _default("queue-num")
    queue_len: int = _default("queue-len")
    queue_time: int = _default("queue-time")
    queue_size: int = _default("queue-size")
    divert_port: int = _default("divert-port")
    bsd_firewall: BsdFirewallChoice = _default("bsd-firewall")
    ipfw_rule: int = _default("ipfw-rule")
    pf_anchor: str = _default("pf-anchor")
    copy_range: int = _default("copy-range")
    mark: int = _default("mark")
    watch_mark: int = _default("watch-mark")
    mode: Mode = _default("mode")
    iface: tuple[str, ...] = _default("iface")
    exclude_iface: tuple[str, ...] = _default("exclude-iface")
    firewall: FirewallChoice = _default("firewall")
    ipv6: bool = _default("ipv6")
    block_quic: QuicBlock = _default("block-quic")
    prefilter: PrefilterChoice = _default("prefilter")
    stats_interval: float = _default("stats-interval")
    metrics: str = _default("metrics")
    hostlist: tuple[str, ...] = _default("hostlist")
    hosts: tuple[str, ...] = _default("hosts")
    hostlist_exclude: tuple[str, ...] = _default("hostlist-exclude")
    hosts_exclude: tuple[str, ...] = _default("hosts-exclude")
    ipset: tuple[str, ...] = _default("ipset")
    ips: tuple[str, ...] = _default("ips")
    ipset_exclude: tuple[str, ...] = _default("ipset-exclude")
    ips_exclude: tuple[str, ...] = _default("ips-exclude")
    hostlist_auto: str = _default("hostlist-auto")
    max_list_bytes: int = _default("max-list-bytes")
    auto_fail_threshold: int = _default("auto-fail-threshold")
    auto_fail_time: float = _default("auto-fail-time")
    auto_retrans: int = _default("auto-retrans")
    auto_silence: float = _default("auto-silence")
    strategy: StrategyMode = _default("strategy")
    strategy_ladder: tuple[str, ...] = _default("strategy-ladder")
    strategy_state: str = _default("strategy-state")
    strategy_unfixable_time: float = _default("strategy-unfixable-time")
    # [[profile]] tables of the config file, as read (checked by govpass.targeting).
    profiles: tuple[Mapping[str, Any], ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def worker_count(self) -> int:
        return self.workers or cpu_count()

    @property
    def port_numbers(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.ports)

    def engine_config(self) -> EngineConfig:
        """The engine's part of the settings (validated by the engine too)."""
        return EngineConfig(
            ports=list(self.port_numbers),
            split_mode=self.split_mode,
            split_chunk=self.split_chunk,
            split_positions=list(self.split_pos),
            collect_timeout_ms=self.collect_timeout,
            max_buffer=self.max_buffer,
            max_held_pkts=self.max_held_pkts,
            max_seg_payload=self.max_seg_payload,
            flow_timeout_s=self.flow_timeout,
            max_flows=self.max_flows,
            auto_retrans=self.auto_retrans,
            auto_silence_s=self.auto_silence,
        )

    def as_dict(self) -> dict[str, Any]:
        return {s.name: getattr(self, s.attr) for s in SETTINGS}


def _check_ports(values: tuple[str, ...], label: str = "ports") -> None:
    for p in values:
        if not (p.isascii() and p.isdigit()) or not 1 <= int(p) <= 65535:
            raise ConfigError(
                f"invalid {label}: {quote(p)} "
                "(accepted: a comma-separated list of ports in 1..=65535)",
                field="ports",
            )


def _check_worker_timeout(value: float) -> None:
    if 0 < value < MIN_WORKER_TIMEOUT:
        raise ConfigError(
            f"invalid worker-timeout: {value:g} (accepted: 0 (off) or a number in "
            f"{MIN_WORKER_TIMEOUT}..=3600)",
            field="worker-timeout",
        )


MAX_CONFIG_BYTES = 16 * 1024 * 1024
"""Largest config file read (inline host lists belong in list files beyond that)."""


def read_file(path: Path) -> dict[str, Any]:
    """Reads a TOML config file; unknown keys are errors (they are usually typos)."""
    data = read_bounded(path, "config file", "config", MAX_CONFIG_BYTES)
    where = _shown(path)
    try:
        parsed = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        msg = f"config file {where} line {line} is not UTF-8 text (accepted: a UTF-8 TOML file)"
        raise ConfigError(msg, field="config") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(
            f"config file {where} is not valid TOML: {e}{_line_of(e, data)} "
            "(accepted: TOML, toml.io)",
            field="config",
        ) from None
    except RecursionError:
        raise ConfigError(
            f"config file {where} is not valid TOML for govpass: arrays or tables nested "
            "too deeply (accepted: settings, [govpass] and [[profile]] tables)",
            field="config",
        ) from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise ConfigError(
            f"config file {where} is not valid TOML for govpass: {escape_text(str(e), 100)} "
            "(accepted: TOML, toml.io)",
            field="config",
        ) from None
    return _settings_table(parsed, where)


def _line_of(e: tomllib.TOMLDecodeError, data: bytes) -> str:
    """The line a TOML error points at, quoted (it names the key: 'Cannot overwrite
    a value' alone does not)."""
    m = re.search(r"at line (\d+)", str(e))
    if m is None:
        return ""
    lines = data.decode("utf-8", "replace").split("\n")
    n = int(m[1])
    return f": {quote(lines[n - 1].strip())}" if 0 < n <= len(lines) else ""


def _settings_table(data: dict[str, Any], where: str) -> dict[str, Any]:
    table = data.get("govpass", data)
    if not isinstance(table, dict):
        raise ConfigError(
            f"in {where}: 'govpass' is {kind_of(table)} (accepted: a [govpass] table of settings)",
            field="govpass",
        )
    if table is not data:
        stray = sorted(set(data) - {"govpass", PROFILE_KEY})
        if stray:
            raise ConfigError(
                f"unknown top-level key {quote(stray[0])} in {where} beside the [govpass] "
                f"table (accepted: [govpass], [[{PROFILE_KEY}]])",
                field=stray[0],
            )
    table = dict(table)
    profiles = table.pop(PROFILE_KEY, None)
    if profiles is None and table is not data:
        profiles = data.get(PROFILE_KEY)  # [[profile]] beside a [govpass] table
    unknown = sorted(set(table) - set(BY_NAME))
    if unknown:
        raise ConfigError(
            f"unknown setting {quote(unknown[0])} in {where} "
            f"(accepted: {', '.join(BY_NAME)}, [[{PROFILE_KEY}]])",
            field=unknown[0],
        )
    if profiles is not None:
        if not isinstance(profiles, list) or not all(isinstance(p, dict) for p in profiles):
            raise ConfigError(
                f"in {where}: '{PROFILE_KEY}' is {kind_of(profiles)} "
                f"(accepted: an array of tables, [[{PROFILE_KEY}]])",
                field=PROFILE_KEY,
            )
        table[PROFILE_KEY] = profiles
    return table


def _from_source(e: ConfigError, sources: Mapping[str, str]) -> ConfigError:
    """The engine's "invalid split-pos: ..." naming where the value came from."""
    setting = BY_NAME.get(e.field or "")
    head = f"invalid {e.field}:"
    if setting is None or not str(e).startswith(head):
        return e
    label = _label(setting, sources.get(setting.name, ""))
    return ConfigError(f"invalid {label}:{str(e)[len(head) :]}", field=e.field)


def _label(setting: Setting, origin: str) -> str:
    """How a value was given, for its error message."""
    if origin == "environment":
        return f"{setting.env} ({setting.name})"
    if origin.startswith("file "):
        return f"{setting.name} in {_shown(origin[5:])}"
    return setting.name


def load(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Merges the layers and validates the result (engine fields included)."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    layers: list[tuple[str, Mapping[str, Any]]] = []
    profiles: tuple[Mapping[str, Any], ...] = ()
    if file is not None:
        data = read_file(file)
        if PROFILE_KEY in data:
            profiles = tuple(data.pop(PROFILE_KEY))
            sources[PROFILE_KEY] = f"file {file}"
        layers.append((f"file {file}", data))
    environ = os.environ if env is None else env
    layers.append(("environment", {s.name: environ[s.env] for s in SETTINGS if s.env in environ}))
    layers.append(("flag", {k: v for k, v in (flags or {}).items() if v is not None}))
    for origin, layer in layers:
        for name, raw in layer.items():
            setting = BY_NAME.get(name.replace("_", "-"))
            if setting is None:
                raise ConfigError(
                    f"unknown setting {quote(name)} (accepted: {', '.join(BY_NAME)})",
                    field=name,
                )
            values[setting.attr] = setting.parse(raw, _label(setting, origin))
            sources[setting.name] = origin
    _check_ports(values.get("ports", ("443",)), _label(BY_NAME["ports"], sources.get("ports", "")))
    _check_worker_timeout(values.get("worker_timeout", 1.0))
    config = Config(**values, profiles=profiles, sources=sources)
    try:
        config.engine_config()  # the engine's own validation, same messages
    except ConfigError as e:
        raise _from_source(e, sources) from None
    targeting = Targeting.from_config(config)  # profiles and inline lists (files are read later)
    _check_strategy(
        config, targeting.learns or (config.strategy == "auto" and not targeting.active)
    )
    return config


def _check_strategy(config: Config, learns: bool) -> None:
    """The ladder's strategies parse; a learning setup names a state file."""
    try:
        ladder(config.strategy_ladder)
    except ConfigError as e:
        raise ConfigError(
            f"invalid strategy-ladder: {e} (accepted: strategies such as '1;2;2,midsld')",
            field="strategy-ladder",
        ) from None
    if learns and not config.strategy_state.strip():
        raise ConfigError(
            "invalid strategy-state '' (accepted: the path of a state file)",
            field="strategy-state",
        )


def with_overrides(config: Config, **changes: Any) -> Config:
    return dataclasses.replace(config, **changes)
