"""What the interception rules must do, as one validated, immutable value.

Every rule generator (iptables, nftables) takes a :class:`RuleSpec` and nothing
else, so the same spec always plans the same commands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Protocol

from govpass.errors import FirewallError

Mode = Literal["host", "router"]
Family = Literal["ipv4", "ipv6"]
QuicMode = Literal["off", "all", "listed"]
QUIC_MODES: tuple[QuicMode, ...] = ("off", "all", "listed")
Prefilter = Literal["auto", "bpf", "conntrack"]
PREFILTERS: tuple[Prefilter, ...] = ("auto", "bpf", "conntrack")
DEFAULT_PREFILTER_AGE_MS = 500

U32_MAX = 0xFFFFFFFF
DEFAULT_QUEUE_NUM = 200
DEFAULT_MARK = 0x10000000
DEFAULT_WATCH_MARK = 0x20000000
DEFAULT_MAX_PACKETS = 12
# Replies looked at per connection when `inbound` is on. The server's pure ACKs of
# a split hello's segments come first and count too: the reply must still be among
# them, or a working flow's silence would read as a failure (auto-silence).
INBOUND_PACKETS = 16
QUIC_PACKETS = 8  # outbound QUIC datagrams of a flow queued with block_quic "listed"
MULTIPORT_MAX = 15  # xt_multiport accepts at most 15 ports per rule

# Kernel interface names are at most 15 bytes (IFNAMSIZ - 1).  A trailing "+" is
# the iptables wildcard ("eth+" = every name starting with "eth"); nft spells it "*".
_IFNAME = re.compile(r"^[^\s/\"'+*\\]{1,15}\+?$")


@dataclass(frozen=True)
class KernelSplitGate:
    """Leave whole one-packet ClientHello records (payload ``min_payload`` to
    ``max_payload`` bytes, and no more than the engine would cut into two
    segments at ``chunk`` with ``max_seg_payload``: the packet's headers over 40
    bytes take their size off it) out of the queue while the u32 at key 0 of the
    bpf array map ``map_fd`` is non-zero: the kernel split takes them then (see
    govpass.bpf.ksplit). Only the eBPF pre-filter can carry it."""

    map_fd: int
    min_payload: int
    max_payload: int
    chunk: int
    max_seg_payload: int


class RuleSpecError(FirewallError, ValueError):
    """A RuleSpec field is out of range; raised at construction, never later."""


class _Scope(Protocol):
    """What check_scope reads (read-only: the specs are frozen dataclasses)."""

    @property
    def ports(self) -> tuple[int, ...]: ...
    @property
    def mode(self) -> str: ...
    @property
    def interfaces(self) -> tuple[str, ...]: ...
    @property
    def exclude_interfaces(self) -> tuple[str, ...]: ...
    @property
    def ipv4(self) -> bool: ...
    @property
    def ipv6(self) -> bool: ...


def check_scope(spec: _Scope, max_ports: int, ifname: re.Pattern[str]) -> None:
    """Checks every platform's rule spec shares: ports, mode, interfaces, families."""
    if not 1 <= len(spec.ports) <= max_ports:
        raise RuleSpecError(f"at least one and at most {max_ports} ports, got {len(spec.ports)}")
    if len(set(spec.ports)) != len(spec.ports):
        raise RuleSpecError(f"ports contain duplicates: {spec.ports}")
    for port in spec.ports:
        if not 1 <= port <= 0xFFFF:
            raise RuleSpecError(f"port must be in 1..65535, got {port}")
    if spec.mode not in ("host", "router"):
        raise RuleSpecError(f"mode must be 'host' or 'router', got {spec.mode!r}")
    for name in ("interfaces", "exclude_interfaces"):
        for name_ in getattr(spec, name):
            if not ifname.match(name_):
                raise RuleSpecError(f"{name}: invalid interface name {name_!r}")
    overlap = set(spec.interfaces) & set(spec.exclude_interfaces)
    if overlap:
        raise RuleSpecError(f"interfaces both included and excluded: {sorted(overlap)}")
    if spec.mode == "router" and not spec.interfaces:
        raise RuleSpecError("router mode needs at least one WAN interface in interfaces")
    if not (spec.ipv4 or spec.ipv6):
        raise RuleSpecError("at least one of ipv4 / ipv6 must be enabled")


@dataclass(frozen=True)
class RuleSpec:
    """Which packets to send to NFQUEUE, and with which marks.

    ``mark`` is the fwmark govpass puts on the segments it injects (and on the
    originals it accepts); the rules let such packets through untouched.
    ``watch_mark`` is a conntrack-mark bit meaning "govpass is still collecting
    this flow": while it is set, every packet of the flow is queued.
    ``inbound`` (auto-learning) also queues the first :data:`INBOUND_PACKETS`
    reply packets of a connection from the watched ports, when they are a RST or
    start like a TLS handshake record: enough to see whether a server answered.
    """

    queue_num: int = DEFAULT_QUEUE_NUM
    queue_count: int = 1
    mark: int = DEFAULT_MARK
    watch_mark: int = DEFAULT_WATCH_MARK
    ports: tuple[int, ...] = (443,)
    mode: Mode = "host"
    interfaces: tuple[str, ...] = ()
    exclude_interfaces: tuple[str, ...] = ()
    ipv4: bool = True
    ipv6: bool = True
    max_packets: int = DEFAULT_MAX_PACKETS
    bypass: bool = True
    inbound: bool = False
    # Outbound QUIC Initial (and 0-RTT) packets to the ports over UDP: "all" drops
    # them in the kernel, so browsers fall back to TCP, where govpass works;
    # "listed" queues the first QUIC_PACKETS of a flow so govpass drops only
    # those of names it would split; "off" leaves UDP alone. (True/False are
    # taken as "all"/"off".)
    block_quic: QuicMode = "off"
    # How the kernel knows which later packets of a flow to queue: "bpf", an eBPF
    # program in an iptables `bpf` match that follows the ClientHello record by
    # sequence number (no connection tracking; iptables-nft only), "conntrack", a
    # connmark bit bounded by connbytes, or "auto", bpf when it can be loaded.
    # `install` resolves it; the plan uses the program only when
    # `prefilter_pin` names where it is pinned (`<prefilter_pin>-ipv4`, `-ipv6`).
    prefilter: Prefilter = "auto"
    prefilter_pin: str = ""
    # How long the program keeps queueing a record's later packets (ms).
    prefilter_age_ms: int = DEFAULT_PREFILTER_AGE_MS
    # With the eBPF pre-filter: leave whole one-packet hellos to the kernel split.
    kernel_split: KernelSplitGate | None = None

    def __post_init__(self) -> None:
        # Accept lists from config/CLI callers but store tuples, so the spec stays hashable.
        for name in ("ports", "interfaces", "exclude_interfaces"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.block_quic, bool):
            object.__setattr__(self, "block_quic", "all" if self.block_quic else "off")
        self._validate()

    def _validate(self) -> None:
        if not 0 <= self.queue_num <= 0xFFFF:
            raise RuleSpecError(f"queue_num must be in 0..65535, got {self.queue_num}")
        if self.queue_count < 1 or self.queue_num + self.queue_count - 1 > 0xFFFF:
            raise RuleSpecError(
                f"queue_count must be >= 1 and keep the last queue <= 65535, "
                f"got queue_num={self.queue_num} queue_count={self.queue_count}"
            )
        for name in ("mark", "watch_mark"):
            value = getattr(self, name)
            if not 0 < value <= U32_MAX:
                raise RuleSpecError(f"{name} must be a non-zero 32-bit value, got {value:#x}")
        check_scope(self, MULTIPORT_MAX, _IFNAME)
        if not 1 <= self.max_packets <= U32_MAX:
            raise RuleSpecError(f"max_packets must be >= 1, got {self.max_packets}")
        if self.prefilter not in PREFILTERS:
            raise RuleSpecError(
                f"prefilter must be one of {', '.join(PREFILTERS)}, got {self.prefilter!r}"
            )
        if not 1 <= self.prefilter_age_ms <= 3_600_000:
            raise RuleSpecError(
                f"prefilter_age_ms must be in 1..3600000, got {self.prefilter_age_ms}"
            )
        if self.prefilter_pin and self.prefilter == "conntrack":
            raise RuleSpecError("prefilter_pin is set but prefilter is conntrack")
        if self.block_quic not in QUIC_MODES:
            raise RuleSpecError(
                f"block_quic must be one of {', '.join(QUIC_MODES)}, got {self.block_quic!r}"
            )

    @property
    def families(self) -> tuple[Family, ...]:
        out: list[Family] = []
        if self.ipv4:
            out.append("ipv4")
        if self.ipv6:
            out.append("ipv6")
        return tuple(out)

    @property
    def uses_bpf(self) -> bool:
        """Whether the plan queues through the pinned eBPF program."""
        return bool(self.prefilter_pin)

    def bpf_pin(self, family: Family) -> str:
        return f"{self.prefilter_pin}-{family}"

    @property
    def queue_last(self) -> int:
        return self.queue_num + self.queue_count - 1

    @property
    def watch_clear_mask(self) -> int:
        """AND-mask that clears ``watch_mark`` in a 32-bit ct mark."""
        return ~self.watch_mark & U32_MAX
