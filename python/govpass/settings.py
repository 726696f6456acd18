"""Every setting govpass has: its one name, default, meaning and parser.

A setting's name (``split-chunk``) is the TOML key, the CLI flag
(``--split-chunk``) and, upper-cased with ``GOVPASS_`` in front and dashes as
underscores, the environment variable (``GOVPASS_SPLIT_CHUNK``). How they
combine into a :class:`govpass.config.Config` is :func:`govpass.config.load`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

from govpass.backends import default_name
from govpass.errors import ConfigError
from govpass.quoting import quote

# The values each choice setting accepts, as types (Config's fields) and as the
# choices the parser checks (typing.get_args of the same type).
SplitMode = Literal["tls-hello", "immediate"]
StrategyMode = Literal["fixed", "auto"]
BackendChoice = Literal["nfqueue", "divert"]
WorkerSched = Literal["batch", "normal"]
PacketLoop = Literal["rust", "python"]
Inject = Literal["auto", "raw"]
KernelSplit = Literal["auto", "off"]
BsdFirewallChoice = Literal["ipfw", "pf", "none"]
PrefilterChoice = Literal["auto", "bpf", "conntrack"]
Mode = Literal["host", "router"]
FirewallChoice = Literal["auto", "nftables", "iptables", "none"]
QuicBlock = Literal["off", "all", "listed"]

ENV_PREFIX = "GOVPASS_"
MIN_WORKER_TIMEOUT = 0.5  # an idle worker's loop comes round every 0.25 s
DEFAULT_BACKEND = default_name()  # NFQUEUE on Linux, divert elsewhere


def cpu_count() -> int:
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
    kind: str  # "int" | "float" | "str" | "list" | "bool" | "choice" | "address"
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
        if self.kind == "address":
            return (
                "HOST:PORT (HOST an IPv4 address or localhost), [IPV6]:PORT, "
                "a port alone (127.0.0.1:PORT), or off"
            )
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
        if self.kind == "address":
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise bad
            try:
                return listen_text(str(value))
            except ValueError:
                raise bad from None
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


def listen_address(text: str) -> tuple[str, int] | None:
    """An "address" setting's value as (host, port) to bind; None for off.

    Accepted: ``HOST:PORT`` with an IPv4 address (or ``localhost``, 127.0.0.1),
    ``[IPV6]:PORT``, a port alone (loopback: 127.0.0.1), and ``""``/``off``.
    Host names other than localhost are refused: binding to one would depend on
    the resolver at start. Raises ValueError for anything else."""
    t = text.strip()
    if t.lower() in ("", "off"):
        return None
    if len(t) > 64 or not t.isascii() or not t.isprintable():
        raise ValueError(t)
    if t.isdigit():
        host, port = "127.0.0.1", t
    elif t.startswith("["):
        inner, sep, port = t[1:].partition("]:")
        if not sep or "%" in inner:  # no zone index: the bind needs no interface name
            raise ValueError(t)
        host = ipaddress.IPv6Address(inner).compressed
    else:
        name, sep, port = t.rpartition(":")
        if not sep:
            raise ValueError(t)
        host = "127.0.0.1" if name.lower() == "localhost" else str(ipaddress.IPv4Address(name))
    if not (port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
        raise ValueError(t)
    return host, int(port)


def listen_text(text: str) -> str:
    """The canonical spelling of an "address" setting ("" for off): ``HOST:PORT``
    or ``[IPV6]:PORT``. Raises ValueError (see :func:`listen_address`)."""
    address = listen_address(text)
    if address is None:
        return ""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
        choices=get_args(SplitMode),
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
        choices=get_args(StrategyMode),
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
        choices=get_args(BackendChoice),
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
        choices=get_args(WorkerSched),
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
        choices=get_args(PacketLoop),
    ),
    Setting(
        "inject",
        "auto",
        "How the Rust packet loop sends split segments: auto (the last ones in the "
        "verdicts of the captured packets they replace, where the kernel allows it: in "
        "the initial user namespace; the others through raw sockets) or raw (all "
        "through raw sockets)",
        "choice",
        choices=get_args(Inject),
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
        choices=get_args(KernelSplit),
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
        choices=get_args(BsdFirewallChoice),
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
        choices=get_args(PrefilterChoice),
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
        choices=get_args(Mode),
    ),
    Setting("iface", (), "Interfaces to act on (router mode: the WAN side)", "list"),
    Setting("exclude-iface", (), "Interfaces never touched", "list"),
    Setting(
        "firewall",
        "auto",
        "Rule backend",
        "choice",
        choices=get_args(FirewallChoice),
    ),
    Setting("ipv6", True, "Handle IPv6 as well as IPv4", "bool"),
    Setting(
        "block-quic",
        "off",
        "Outbound QUIC Initial packets (UDP to the ports): all: dropped, so browsers fall "
        "back to TCP; listed: dropped only for names govpass would split over TCP "
        "(nfqueue backend); off: untouched",
        "choice",
        choices=get_args(QuicBlock),
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
    Setting(
        "metrics",
        "",
        "Serve the `govpass stats` counters to Prometheus on http://ADDR:PORT/metrics "
        "(a port alone: 127.0.0.1)",
        "address",
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
        "Resends of a watched ClientHello (any part) that count as one failure",
        "int",
        minimum=1,
        maximum=100,
    ),
    Setting(
        "auto-silence",
        4.0,
        "Seconds with no server data after a watched hello that make a failure; 0: off",
        "float",
        minimum=0,
        maximum=600,
    ),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
