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
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from govpass._core import EngineConfig
from govpass.backends import default_name
from govpass.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ENV_PREFIX = "GOVPASS_"
PROFILE_KEY = "profile"  # [[profile]] tables: see govpass.targeting
DEFAULT_BACKEND = default_name()  # NFQUEUE on Linux, divert elsewhere


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Setting:
    """One configurable value: its name, default, meaning and parser."""

    name: str
    default: Any
    help: str
    kind: str  # "int" | "float" | "str" | "list" | "bool" | "choice"
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    # "choice": (spelling, choice) pairs also taken, e.g. a former bool's true/false
    aliases: tuple[tuple[str, str], ...] = ()

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.attr.upper()

    def accepted(self) -> str:
        if self.kind == "choice":
            return ", ".join(self.choices)
        if self.kind == "bool":
            return "true or false"
        if self.kind == "list":
            return "a comma-separated list"
        if self.kind == "str":
            return "a string"
        lo = "" if self.minimum is None else _num(self.minimum)
        hi = "" if self.maximum is None else _num(self.maximum)
        what = "an integer" if self.kind == "int" else "a number"
        return f"{what} in {lo}..={hi}" if lo or hi else what

    def parse(self, value: Any) -> Any:
        """Turns a TOML value or a string from the environment/CLI into the typed value."""
        bad = ConfigError(
            f"invalid {self.name}: {value!r} (accepted: {self.accepted()})", field=self.name
        )
        if self.kind == "list":
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            if isinstance(value, list | tuple):
                return tuple(str(v).strip() for v in value)
            raise bad
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise bad
        if self.kind == "choice":
            text = str(value)
            text = dict(self.aliases).get(text.lower(), text)
            if text not in self.choices:
                raise bad
            return text
        if self.kind == "str":
            if not isinstance(value, str):
                raise bad
            return value
        try:
            if isinstance(value, bool):
                raise ValueError
            if self.kind == "int":
                number: float = int(value, 0) if isinstance(value, str) else int(value)
                if isinstance(value, float) and value != int(value):
                    raise ValueError
            else:
                number = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if number != number:  # NaN compares false with everything
            raise bad
        if (self.minimum is not None and number < self.minimum) or (
            self.maximum is not None and number > self.maximum
        ):
            raise bad
        return number


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


SETTINGS: tuple[Setting, ...] = (
    # Engine (checked again, authoritatively, by the engine itself).
    Setting(
        "split-mode",
        "tls-hello",
        "Which bytes are split: the whole first TLS record "
        "(tls-hello) or only the first payload packet (immediate)",
        "choice",
        choices=("tls-hello", "immediate"),
    ),
    Setting(
        "split-chunk",
        5,
        "Size in bytes of the first segment (0: positions only)",
        "int",
        minimum=0,
        maximum=16384,
    ),
    Setting(
        "split-pos",
        (),
        "Further cut positions: N, sni, sniend, midsld, each with "
        "an optional +N/-N (e.g. 'sni+1,midsld')",
        "list",
    ),
    Setting(
        "collect-timeout",
        250.0,
        "Milliseconds a flow may hold packets while its first record is incomplete",
        "float",
        minimum=1,
        maximum=60000,
    ),
    Setting(
        "max-buffer",
        65536,
        "Most bytes of a first record that are buffered",
        "int",
        minimum=64,
        maximum=16 * 1024 * 1024,
    ),
    Setting(
        "max-held-pkts", 32, "Most packets of one flow held at once", "int", minimum=1, maximum=4096
    ),
    Setting(
        "max-seg-payload",
        1460,
        "Largest payload of a generated segment",
        "int",
        minimum=1,
        maximum=65475,
    ),
    Setting(
        "flow-timeout",
        30.0,
        "Seconds after which an idle flow is forgotten",
        "float",
        minimum=1,
        maximum=86400,
    ),
    Setting(
        "max-flows",
        131072,
        "Most flows tracked per worker; the oldest is evicted",
        "int",
        minimum=1,
        maximum=16777216,
    ),
    Setting("ports", ("443",), "Destination TCP ports whose flows are reshaped", "list"),
    # Capture and rules.
    Setting(
        "backend",
        DEFAULT_BACKEND,
        "Capture backend (default: this platform's own)",
        "choice",
        choices=("nfqueue", "divert"),
    ),
    Setting(
        "workers",
        0,
        "Worker processes, one queue each (0: one per CPU core)",
        "int",
        minimum=0,
        maximum=256,
    ),
    Setting(
        "worker-sched",
        "batch",
        "Scheduling of NFQUEUE workers: batch (no wake-up preemption; best throughput "
        "under load) or normal",
        "choice",
        choices=("batch", "normal"),
    ),
    Setting(
        "packet-loop",
        "rust",
        "NFQUEUE workers: rust (the engine reads the queue's socket itself and sends "
        "verdicts in batches) or python (a netfilterqueue callback per packet); "
        "block-quic listed always uses python",
        "choice",
        choices=("rust", "python"),
    ),
    Setting(
        "inject",
        "auto",
        "How the Rust packet loop sends split segments: auto (the last ones in the "
        "verdicts of the captured packets they replace, where the kernel allows it: in "
        "the initial user namespace; the others through raw sockets) or raw (all "
        "through raw sockets)",
        "choice",
        choices=("auto", "raw"),
    ),
    Setting(
        "kernel-split",
        "auto",
        "auto: a ClientHello that leaves whole in one packet is split in the kernel "
        "by a tc egress eBPF program on the covered interfaces (no trip to a worker); "
        "the others go to the workers. Used with the bpf pre-filter, split-mode "
        "tls-hello, a split-chunk of 1..64, no split-pos and no host lists or IP sets; "
        "off: every hello goes to the workers",
        "choice",
        choices=("auto", "off"),
    ),
    Setting("queue-num", 200, "First NFQUEUE number", "int", minimum=0, maximum=65535),
    Setting(
        "queue-len",
        4096,
        "Kernel queue length (packets) per queue",
        "int",
        minimum=16,
        maximum=1_048_576,
    ),
    Setting(
        "queue-time",
        2000,
        "Divert backend: milliseconds a captured packet may wait in the WinDivert queue "
        "before it is dropped",
        "int",
        minimum=100,
        maximum=16000,
    ),
    Setting(
        "queue-size",
        32 * 1024 * 1024,
        "Divert backend: most bytes held in the WinDivert queue",
        "int",
        minimum=65535,
        maximum=32 * 1024 * 1024,
    ),
    Setting(
        "divert-port",
        4430,
        "FreeBSD: divert(4) port the ipfw/pf rules send packets to",
        "int",
        minimum=1,
        maximum=65535,
    ),
    Setting(
        "bsd-firewall",
        "ipfw",
        "FreeBSD: which firewall carries the divert rules (none: managed by hand)",
        "choice",
        choices=("ipfw", "pf", "none"),
    ),
    Setting(
        "ipfw-rule",
        100,
        "FreeBSD: ipfw rule number for govpass's rules",
        "int",
        minimum=1,
        maximum=65534,
    ),
    Setting("pf-anchor", "govpass", "FreeBSD: pf anchor holding govpass's rules", "str"),
    Setting(
        "copy-range",
        65535,
        "Bytes of each queued packet copied to govpass (the netfilterqueue binding caps it "
        "at 4016); a packet cut short is passed untouched",
        "int",
        minimum=64,
        maximum=65535,
    ),
    Setting(
        "mark",
        0x10000000,
        "Firewall mark on injected and released packets (the rules skip it)",
        "int",
        minimum=1,
        maximum=0xFFFFFFFF,
    ),
    Setting(
        "prefilter",
        "auto",
        "How the rules find a ClientHello's later packets: bpf (an eBPF program in the "
        "iptables bpf match follows the record; no connection tracking, needs "
        "iptables-nft and CAP_BPF), conntrack (a connmark bit bounded by connbytes), "
        "auto (bpf when it loads, else conntrack)",
        "choice",
        choices=("auto", "bpf", "conntrack"),
    ),
    Setting(
        "watch-mark",
        0x20000000,
        "Conntrack mark bit for flows still watched (prefilter conntrack)",
        "int",
        minimum=1,
        maximum=0xFFFFFFFF,
    ),
    Setting(
        "mode",
        "host",
        "host: this machine's own traffic; router: forwarded traffic",
        "choice",
        choices=("host", "router"),
    ),
    Setting("iface", (), "Interfaces to act on (router mode: the WAN side)", "list"),
    Setting("exclude-iface", (), "Interfaces never touched", "list"),
    Setting(
        "firewall",
        "auto",
        "Rule backend",
        "choice",
        choices=("auto", "nftables", "iptables", "none"),
    ),
    Setting("ipv6", True, "Handle IPv6 as well as IPv4", "bool"),
    Setting(
        "block-quic",
        "off",
        "Outbound QUIC Initial packets (UDP to the ports): all: dropped, so browsers fall "
        "back to TCP; listed: dropped only for names govpass would split over TCP "
        "(nfqueue backend); off: untouched",
        "choice",
        choices=("off", "all", "listed"),
        aliases=(("true", "all"), ("false", "off")),
    ),
    Setting(
        "stats-interval",
        2.0,
        "Seconds between status updates / log lines",
        "float",
        minimum=0.1,
        maximum=3600,
    ),
    # Targeting shortcuts (govpass.targeting): any list given makes the profiles
    # [listed: split, other: pass]; [[profile]] tables in the config file say more.
    Setting(
        "hostlist",
        (),
        "Host list files: split only these names (one per line, subdomains match, "
        "^name exact, # comments, gzip ok)",
        "list",
    ),
    Setting("hosts", (), "Host names to split, inline (like --hostlist)", "list"),
    Setting("hostlist-exclude", (), "Host list files whose names are never split", "list"),
    Setting("hosts-exclude", (), "Host names never split, inline", "list"),
    Setting(
        "ipset",
        (),
        "IP set files: split only flows to these addresses/CIDRs (IPv4 and IPv6)",
        "list",
    ),
    Setting("ips", (), "Addresses/CIDRs to split, inline (like --ipset)", "list"),
    Setting("ipset-exclude", (), "IP set files whose addresses are never split", "list"),
    Setting("ips-exclude", (), "Addresses/CIDRs never split, inline", "list"),
    Setting(
        "hostlist-auto",
        "",
        "Auto host list file: names on no list pass untouched until they fail "
        "auto-fail-threshold times, are then added here and split",
        "str",
    ),
    Setting(
        "auto-fail-threshold",
        3,
        "Failures of a name (within auto-fail-time of each other) that add it to the auto list",
        "int",
        minimum=1,
        maximum=1000,
    ),
    Setting(
        "auto-fail-time",
        60.0,
        "Seconds after a failure within which the next one still counts",
        "float",
        minimum=1,
        maximum=86400,
    ),
    Setting(
        "auto-retrans",
        3,
        "Retransmissions of a watched ClientHello that count as one failure",
        "int",
        minimum=1,
        maximum=100,
    ),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Config:
    """Typed, validated settings. Build with :func:`load`."""

    split_mode: str = "tls-hello"
    split_chunk: int = 5
    split_pos: tuple[str, ...] = ()
    collect_timeout: float = 250.0
    max_buffer: int = 65536
    max_held_pkts: int = 32
    max_seg_payload: int = 1460
    flow_timeout: float = 30.0
    max_flows: int = 131072
    ports: tuple[str, ...] = ("443",)
    backend: str = DEFAULT_BACKEND
    workers: int = 0
    worker_sched: str = "batch"
    packet_loop: str = "rust"
    inject: str = "auto"
    kernel_split: str = "auto"
    queue_num: int = 200
    queue_len: int = 4096
    queue_time: int = 2000
    queue_size: int = 32 * 1024 * 1024
    divert_port: int = 4430
    bsd_firewall: str = "ipfw"
    ipfw_rule: int = 100
    pf_anchor: str = "govpass"
    copy_range: int = 65535
    mark: int = 0x10000000
    watch_mark: int = 0x20000000
    mode: str = "host"
    iface: tuple[str, ...] = ()
    exclude_iface: tuple[str, ...] = ()
    firewall: str = "auto"
    ipv6: bool = True
    block_quic: str = "off"
    prefilter: str = "auto"
    stats_interval: float = 2.0
    hostlist: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    hostlist_exclude: tuple[str, ...] = ()
    hosts_exclude: tuple[str, ...] = ()
    ipset: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    ipset_exclude: tuple[str, ...] = ()
    ips_exclude: tuple[str, ...] = ()
    hostlist_auto: str = ""
    auto_fail_threshold: int = 3
    auto_fail_time: float = 60.0
    auto_retrans: int = 3
    # [[profile]] tables of the config file, as read (checked by govpass.targeting).
    profiles: tuple[Mapping[str, Any], ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def worker_count(self) -> int:
        return self.workers or _cpu_count()

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
        )

    def as_dict(self) -> dict[str, Any]:
        return {s.name: getattr(self, s.attr) for s in SETTINGS}


def _check_ports(values: tuple[str, ...]) -> None:
    for p in values:
        if not p.isdigit() or not 1 <= int(p) <= 65535:
            raise ConfigError(
                f"invalid ports: {p!r} (accepted: a comma-separated list of ports in 1..=65535)",
                field="ports",
            )


def read_file(path: Path) -> dict[str, Any]:
    """Reads a TOML config file; unknown keys are errors (they are usually typos)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}", field="config") from e
    except UnicodeDecodeError as e:
        msg = f"config file {path} is not UTF-8 text: {e.reason}"
        raise ConfigError(msg, field="config") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}", field="config") from e
    table = data.get("govpass", data)
    if not isinstance(table, dict):
        raise ConfigError(
            f"in {path}: 'govpass' must be a table of settings, not {type(table).__name__}",
            field="govpass",
        )
    table = dict(table)
    profiles = table.pop(PROFILE_KEY, None)
    if profiles is None and table is not data:
        profiles = data.get(PROFILE_KEY)  # [[profile]] beside a [govpass] table
    unknown = sorted(set(table) - set(BY_NAME))
    if unknown:
        raise ConfigError(
            f"unknown setting {unknown[0]!r} in {path} "
            f"(accepted: {', '.join(BY_NAME)}, [[{PROFILE_KEY}]])",
            field=unknown[0],
        )
    if profiles is not None:
        if not isinstance(profiles, list) or not all(isinstance(p, dict) for p in profiles):
            raise ConfigError(
                f"in {path}: '{PROFILE_KEY}' must be an array of tables ([[{PROFILE_KEY}]])",
                field=PROFILE_KEY,
            )
        table[PROFILE_KEY] = profiles
    return table


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
                raise ConfigError(f"unknown setting {name!r}", field=name)
            values[setting.attr] = setting.parse(raw)
            sources[setting.name] = origin
    _check_ports(values.get("ports", ("443",)))
    config = Config(**values, profiles=profiles, sources=sources)
    config.engine_config()  # the engine's own validation, same messages
    from govpass.targeting import Targeting

    Targeting.from_config(config)  # profiles and inline lists (files are read later)
    return config


def with_overrides(config: Config, **changes: Any) -> Config:
    return dataclasses.replace(config, **changes)
