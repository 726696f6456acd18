"""Type stubs of the Rust extension ``govpass._core``."""

from typing import Any, Final, Literal, final

__version__: Final[str]
__all__ = [
    "ACCEPT",
    "DROP",
    "FAIL_REASONS",
    "RELEASE",
    "SEND",
    "Action",
    "CryptoStream",
    "Engine",
    "EngineConfig",
    "HostList",
    "IpSet",
    "Profile",
    "QuicHeader",
    "__version__",
    "client_hello_sni",
    "ksplit_attach",
    "ksplit_counters",
    "ksplit_load",
    "prefilter_load",
    "quic_initial_sni",
    "quic_long_header",
]

RELEASE: Final[int]
"""Send the held original unchanged (its flow's decision is made)."""
DROP: Final[int]
"""Discard the held original: its bytes go out in SEND segments."""
SEND: Final[int]
"""Inject the new packet in ``Action.packet``."""
ACCEPT: Final[int]
"""Send the original unchanged; its flow is still being collected."""
FAIL_REASONS: Final[list[str]]

@final
class EngineConfig:
    """Engine settings with the seed defaults. Invalid values raise
    ``govpass.errors.ConfigError`` naming the field and the accepted range."""

    def __new__(
        cls,
        *,
        ports: list[int] = ...,
        split_mode: str = ...,
        split_chunk: int = 5,
        split_positions: list[str] = ...,
        collect_timeout_ms: float = 250.0,
        max_buffer: int = 65536,
        max_held_pkts: int = 32,
        max_seg_payload: int = 1460,
        flow_timeout_s: float = 30.0,
        max_flows: int = 131072,
        auto_retrans: int = 3,
        auto_silence_s: float = 4.0,
    ) -> EngineConfig: ...
    @property
    def ports(self) -> list[int]: ...
    @property
    def split_mode(self) -> str: ...
    @property
    def split_chunk(self) -> int: ...
    @property
    def split_positions(self) -> list[str]: ...
    @property
    def collect_timeout_ms(self) -> float: ...
    @property
    def max_buffer(self) -> int: ...
    @property
    def max_held_pkts(self) -> int: ...
    @property
    def max_seg_payload(self) -> int: ...
    @property
    def flow_timeout_s(self) -> float: ...
    @property
    def max_flows(self) -> int: ...
    @property
    def auto_retrans(self) -> int: ...
    @property
    def auto_silence_s(self) -> float: ...

@final
class Action:
    """One thing for a backend to do, in order."""

    @property
    def kind(self) -> int: ...
    @property
    def handle(self) -> Any: ...
    @property
    def packet(self) -> bytes: ...

@final
class HostList:
    """Host names; an entry matches its subdomains unless written ``^name``.
    A bad line raises ``ConfigError`` (field ``hostlist``) naming the line."""

    def __new__(cls, lines: list[str]) -> HostList: ...
    @staticmethod
    def from_bytes(data: bytes, *, skip_invalid: bool = False) -> HostList:
        """A list file's bytes (UTF-8, split at ``\\n``, a leading BOM ignored),
        parsed without the GIL. Data that is not UTF-8 raises ``ConfigError``
        naming the line; with `skip_invalid`, bad entries are left out and
        counted instead of raising."""
    @property
    def skipped(self) -> int:
        """Lines ``from_bytes(..., skip_invalid=True)`` left out."""
    @property
    def skipped_lines(self) -> list[int]:
        """The first (at most five) of those line numbers, 1-based."""
    def __len__(self) -> int: ...
    def __contains__(self, host: str, /) -> bool: ...

@final
class IpSet:
    """IPv4/IPv6 addresses and CIDR prefixes. A bad line raises ``ConfigError``."""

    def __new__(cls, lines: list[str]) -> IpSet: ...
    @staticmethod
    def from_bytes(data: bytes) -> IpSet:
        """A list file's bytes, parsed without the GIL (as ``HostList.from_bytes``)."""
    def __len__(self) -> int: ...
    def __contains__(self, addr: str, /) -> bool: ...

@final
class Profile:
    """Filters and an action; profiles are tried in order, first match wins."""

    def __new__(
        cls,
        name: str,
        *,
        action: str = ...,
        split_chunk: int = 5,
        split_positions: list[str] = ...,
        hosts: list[HostList] = ...,
        hosts_exclude: list[HostList] = ...,
        ips: list[IpSet] = ...,
        ips_exclude: list[IpSet] = ...,
        ports: list[int] = ...,
        family: str | None = None,
        ifaces: list[int] = ...,
        auto: bool = False,
        watch: bool = False,
    ) -> Profile: ...
    @property
    def name(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def auto(self) -> bool: ...
    @property
    def watch(self) -> bool:
        """Flows it splits or passes (with a host name) report a verdict too."""

@final
class Engine:
    """The sans-I/O engine. A packet given to ``process`` either passes at once
    (``None``) or the engine owns it and gives its fate (RELEASE, DROP or
    ACCEPT) exactly once, in the returned list or a later call's."""

    def __new__(cls, config: EngineConfig | None = None) -> Engine: ...
    def process(
        self, packet: bytes, now: float, handle: Any = None, iface: int = 0
    ) -> list[Action] | None: ...
    def set_profiles(self, profiles: list[Profile]) -> None: ...
    def choose(
        self, host: str | None, dst: str, dport: int, iface: int = 0
    ) -> Literal["split", "pass", "watch"]:
        """What a TCP flow to ``dst``:``dport`` whose ClientHello names ``host``
        would get from the profiles. ``ValueError`` if ``dst`` is not an address."""
    def profile_names(self) -> list[str]: ...
    def take_events(self) -> list[tuple[str, str, bool]]:
        """Auto-learning verdicts since the last call: (profile, host, failed)."""
    def expire(self, now: float) -> list[Action]: ...
    def release_all(self) -> list[Action]: ...
    @property
    def config(self) -> EngineConfig: ...
    def stats(self) -> dict[str, Any]:
        """Counters and gauges; of auto-learning: ``watched``, ``auto_failures`` (of
        them ``auto_silent``: no server data within auto-silence), ``auto_successes``."""
    @property
    def held_packets(self) -> int:
        """Packets held right now (the loop's timer only has work while some are)."""
    def nfq_attach(
        self,
        fd: int,
        queue: int,
        mark: int,
        raw4: int,
        raw6: int | None = None,
        in_verdicts: bool = False,
    ) -> None:
        """Hand a bound NFQUEUE socket to the Rust packet loop (Linux): from then
        on the nfq_* methods drive the engine (``process``, ``expire`` and
        ``release_all`` raise). Releases carry ``mark``; segments leave through
        the raw sockets ``raw4``/``raw6``, or with ``in_verdicts`` a split's last
        segments in the verdicts of the packets they replace. The caller keeps
        the descriptors open."""
    def nfq_run(self, timeout: float) -> int:
        """Handle queued packets as they come for ``timeout`` seconds (less when
        a signal arrives, or when a packet is held and none was at the call);
        the number read."""
    def nfq_expire(self, now: float) -> None: ...
    def nfq_release_all(self) -> None: ...
    def nfq_counters(self) -> dict[str, int]:
        """inject_sent, inject_errors, verdict_sent, verdict_errors of the loop."""
    def _arm_panic(self) -> None: ...

def client_hello_sni(
    handshake: bytes,
) -> tuple[Literal["found", "absent", "needmore", "malformed"], str | None]:
    """Server name of the ClientHello handshake message (no TLS record header)
    that ``handshake`` starts with: ``("found", name)``, ``("absent", None)``,
    ``("needmore", None)`` for a prefix too short to tell, ``("malformed", None)``."""

@final
class QuicHeader:
    """The unprotected part of the QUIC long header at the start of a UDP payload."""

    @property
    def version(self) -> int: ...
    @property
    def dcid(self) -> bytes: ...
    @property
    def kind(self) -> Literal["initial", "0rtt", "handshake", "retry"] | None:
        """None for a version other than 1 and 2."""
    def initial_frames(self) -> list[tuple[int, bytes]] | str:
        """``(offset, data)`` of every CRYPTO frame of this Initial (RFC 9001
        protection removed) and of the Initials of the same connection coalesced
        after it, in packet order; or, when the first packet gives none (not an
        Initial, does not decrypt, a frame an Initial cannot hold), the reason."""

def quic_long_header(datagram: bytes) -> QuicHeader | str:
    """The long header at the start of ``datagram``, or the reason it is none."""

def quic_initial_sni(
    datagram: bytes,
) -> tuple[Literal["found", "absent", "needmore", "malformed", "error"], str | None]:
    """Server name of the ClientHello in the Initial packets of one datagram, as
    :func:`client_hello_sni` answers; ``("error", reason)`` when the datagram gives
    no CRYPTO data."""

@final
class CryptoStream:
    """The CRYPTO data of one connection, keyed by offset (frames come in any
    order, repeated, overlapping). Bounded: data past ``limit``, more than
    ``max_pieces`` pieces or more than 2 x ``limit`` bytes stored make :meth:`add`
    answer False."""

    def __new__(cls, limit: int, max_pieces: int = 64) -> CryptoStream: ...
    @property
    def limit(self) -> int: ...
    @property
    def max_pieces(self) -> int: ...
    @property
    def stored(self) -> int: ...
    def add(self, offset: int, data: bytes) -> bool: ...
    def prefix(self) -> bytes:
        """The contiguous data from offset 0 (where pieces overlap, the first wins)."""
    def sni(self) -> tuple[Literal["found", "absent", "needmore", "malformed"], str | None]:
        """:func:`client_hello_sni` of :meth:`prefix`."""

def prefilter_load(
    family: Literal["ipv4", "ipv6"],
    max_age_ns: int,
    pin_dir: str,
    gate: tuple[int, int, int, int, int] | None = None,
) -> tuple[int, int]:
    """Load the pre-filter (rust/govpass-ebpf/bpf/prefilter.bpf.c) for ``family``:
    ``(program fd, flow map fd)``, both owned by the caller. ``gate`` is the kernel
    split's gate as ``(map fd, min payload, max payload, split chunk, max seg
    payload)``; ``pin_dir`` a directory on a bpf file system, used during the load
    only. Raises :class:`govpass.bpf.syscall.BpfError` (ValueError for an unknown
    family)."""

def ksplit_load(
    *,
    chunk: int,
    max_payload: int,
    max_seg_payload: int,
    ports: list[int],
    mark: int,
    local: bool,
    l2: int,
) -> tuple[int, int, int]:
    """Load the kernel split (rust/govpass-ebpf/bpf/ksplit.bpf.c) with these
    parameters: ``(program fd, scratch map fd, counter map fd)``, owned by the
    caller. Raises ValueError for parameters the program cannot take (chunk
    1..64, max_payload up to 1500 and above chunk and 5, max_seg_payload from 1,
    1..16 non-zero ports, a non-zero mark, l2 0 or 14) and :class:`govpass.bpf.syscall.BpfError`."""

def ksplit_attach(prog_fd: int, ifindex: int) -> int:
    """Attach the kernel split program ``prog_fd`` to interface ``ifindex``'s
    egress as a tcx bpf link: the link's file descriptor, owned by the caller; the
    program stays there while it is open. Raises
    :class:`govpass.bpf.syscall.BpfError` (ENODEV: no such interface)."""

def ksplit_counters(counters_fd: int) -> tuple[int, int, int, int]:
    """The kernel split's counters (split, unsplit, first_only, dropped), each summed
    over the CPUs, from its counter map. Raises :class:`govpass.bpf.syscall.BpfError`."""
