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
from govpass.backends import default_name
from govpass.errors import ConfigError
from govpass.quoting import escape_text, kind_of, quote
from govpass.reading import read_bounded
from govpass.reading import shown as _shown

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ENV_PREFIX = "GOVPASS_"
MIN_WORKER_TIMEOUT = 0.5  # an idle worker's loop comes round every 0.25 s
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
    # "list": what separates the items of a string value (a regular expression)
    separator: str = ","

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

    def parse(self, value: Any, label: str | None = None) -> Any:
        """Turns a TOML value or a string from the environment/CLI into the typed value.

        `label` is how the value was given (``GOVPASS_SPLIT_CHUNK``, ``split-chunk
        in FILE``); an error names it and what is accepted."""
        what = label or self.name
        bad = ConfigError(
            f"invalid {what}: {quote(value)} (accepted: {self.accepted()})", field=self.name
        )
        if self.kind == "list":
            if isinstance(value, str):
                # A custom separator leaves commas to the items ("1, 2,midsld": "1", "2,midsld").
                items = re.split(self.separator, value)
                if self.separator != ",":
                    items = [i.strip(",") for i in items]
            elif isinstance(value, list | tuple) and all(_list_item(v) for v in value):
                items = [str(v) for v in value]
            else:
                raise bad
            out = tuple(v.strip() for v in items if v.strip())
            _check_text(out, what, self.name)
            return out
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            if not isinstance(value, str | int):
                raise bad
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise bad
        if self.kind == "choice":
            if not isinstance(value, str | bool):
                raise bad
            text = str(value)
            text = dict(self.aliases).get(text.lower(), text)
            if text not in self.choices:
                raise bad
            return text
        if self.kind == "str":
            if not isinstance(value, str):
                raise bad
            _check_text((value,), what, self.name)
            return value
        return self._number(value, bad)

    def _number(self, value: Any, bad: ConfigError) -> float:
        # A TOML float (inf and nan included) is no integer; bools are no numbers.
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise bad
        try:
            if self.kind == "int":
                if isinstance(value, float):
                    raise ValueError
                number: float = int(value, 0) if isinstance(value, str) else value
            else:
                number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise bad from None
        if number != number:  # NaN compares false with everything
            raise bad
        if (self.minimum is not None and number < self.minimum) or (
            self.maximum is not None and number > self.maximum
        ):
            raise bad
        return number


def _list_item(v: Any) -> bool:
    """An array element a list setting takes: a string, or an integer (ports = [443])."""
    return isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))


def _check_text(values: tuple[str, ...], what: str, field: str) -> None:
    """Refuses control characters (a NUL, a newline, terminal escapes) in text settings:
    they end up in paths, firewall rules and log lines."""
    for v in values:
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in v):
            raise ConfigError(
                f"invalid {what}: {quote(v)} holds a control character (accepted: printable text)",
                field=field,
            )


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# The ladder of `govpass probe` and `--strategy auto` (govpass.strategy).
# Cheapest to heaviest: two segments with a small first one, then two segments cut
# at the name, then three segments (a small first one and a cut at the name).
DEFAULT_LADDER_TEXT: tuple[str, ...] = (
    "1",
    "2",
    "5",
    "8",
    "sni",
    "midsld",
    "sniend",
    "1,sni+1",
    "2,midsld",
    "1,midsld",
    "8,midsld",
)


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
        "strategy",
        "fixed",
        "fixed: split-chunk/split-pos for all; auto: learn one per (listed) host name",
        "choice",
        choices=("fixed", "auto"),
    ),
    Setting(
        "strategy-ladder",
        DEFAULT_LADDER_TEXT,
        "auto: strategies tried after the configured split and no split ('1;2;2,midsld')",
        "list",
        separator=r"[\s;]+",
    ),
    Setting(
        "strategy-state",
        "/var/lib/govpass/strategies.json",
        "auto: the file keeping learned strategies",
        "str",
    ),
    Setting(
        "strategy-unfixable-time",
        3600.0,
        "auto: seconds a host failing every strategy is left alone",
        "float",
        minimum=1,
        maximum=30 * 86400,
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
        "Worker processes, one queue each (0: one per CPU core); the kernel spreads "
        "packets over the queues by their address pair (source and destination "
        "address, not ports), so all connections between two hosts go to one worker",
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
        "user",
        "",
        "User the NFQUEUE workers become once their sockets are open, when started as "
        "root (empty: govpass if it exists, else nobody; root: keep uid 0 and every "
        "capability)",
        "str",
    ),
    Setting(
        "worker-timeout",
        1.0,
        "Seconds a worker's packet loop may go without running before the daemon kills "
        "and restarts it, so its queue fails open at once (0: off; else at least "
        f"{MIN_WORKER_TIMEOUT}, twice the idle loop's period)",
        "float",
        minimum=0,
        maximum=3600,
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
        "max-list-bytes",
        64 * 1024 * 1024,
        "Largest list file (host list, IP set, auto list) read, in bytes; a gzip file's "
        "decompressed data too",
        "int",
        minimum=1024,
        maximum=4 * 1024 * 1024 * 1024,
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
    user: str = ""
    worker_timeout: float = 1.0
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
    max_list_bytes: int = 64 * 1024 * 1024
    auto_fail_threshold: int = 3
    auto_fail_time: float = 60.0
    auto_retrans: int = 3
    strategy: str = "fixed"
    strategy_ladder: tuple[str, ...] = DEFAULT_LADDER_TEXT
    strategy_state: str = "/var/lib/govpass/strategies.json"
    strategy_unfixable_time: float = 3600.0
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
    from govpass.targeting import Targeting

    targeting = Targeting.from_config(config)  # profiles and inline lists (files are read later)
    _check_strategy(
        config, targeting.learns or (config.strategy == "auto" and not targeting.active)
    )
    return config


def _check_strategy(config: Config, learns: bool) -> None:
    """The ladder's strategies parse; a learning setup names a state file."""
    from govpass.strategy import ladder

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
