"""The kernel split: a tc egress (tcx) eBPF program that makes govpass's default
split of a ClientHello that leaves whole in one packet, without the packet
going to user space.

The program is C (``rust/govpass-ebpf/bpf/ksplit.bpf.c``, whose comments say
what it matches and how it cuts, sums and counts), built by clang into an
object the Rust extension embeds and loads with its parameters set
(:func:`govpass._core.ksplit_load`); this module checks the parameters and
holds the descriptors.

The engine cuts a ClientHello record into a first segment of ``split-chunk``
bytes and the rest. For the common case, a record that fits one packet, this
program makes the same two segments on the interface's egress path, so the
connection never waits for a worker to wake up. Everything else (records over
several packets, host lists, split positions, auto-learning) stays with the
NFQUEUE workers: the rules' pre-filter (:mod:`govpass.bpf.prefilter`) leaves
exactly the packets this program takes out of the queue, and only while the
daemon has the program attached to every interface the rules cover.

A packet is split when all of these hold (anything else goes on untouched):

* it does not carry govpass's mark (the workers' own packets);
* it is not a GSO packet (one packet on the wire);
* it has a socket (host mode: this machine's traffic) or none (router mode:
  forwarded traffic), as the rules' hook (OUTPUT or FORWARD) would see it;
* IPv4 without fragmentation, or IPv6 whose next header is TCP;
* TCP to one of the ports, no SYN, FIN, RST or URG flag (the engine leaves those
  whole too);
* the payload is exactly one ClientHello record (``16 03 VV LL LL 01``,
  VV 01 to 04 as the engine takes them, record length + 5 = payload length),
  longer than ``chunk`` and at most ``max_payload`` bytes;
* the engine, too, would cut it into two segments only: it puts at most
  ``max_seg_payload`` bytes in a segment with 40 bytes of IP and TCP headers,
  and as many fewer as the headers have more (IPv6, options).

The first segment leaves as a copy (``bpf_clone_redirect``); the packet itself
becomes the rest, its sequence number moved on by ``chunk``; PSH is only on the
rest and CWR only on the first segment, as on the engine's segments. Counters:
"split"; "unsplit" (a step failed before the packet changed: it goes on whole);
"first_only" (the copy could not be sent: TCP sends the rest again); "dropped"
(cut, but a header could not be made right: TCP sends it again).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from govpass import _core

CHUNK_MAX = 64  # the first segment is summed from the stack (GP_CHUNK_MAX in common.h)
PAYLOAD_MAX = 1500  # the largest whole record split here (one Ethernet MTU)
PORTS_MAX = 16  # destination ports the program takes (the rules take at most 15)

# Counters (a per-CPU array of u64): what happened to the records taken.
COUNTERS = ("split", "unsplit", "first_only", "dropped")

TCX_NEXT = -1  # go on: the next program on the interface, then the qdisc
TCX_DROP = 2


@dataclass(frozen=True)
class Params:
    """What the program is loaded for (its ``const volatile`` globals)."""

    chunk: int  # first segment's size
    max_payload: int  # largest record split (≤ PAYLOAD_MAX)
    # The engine's max-seg-payload: a record it would cut into more than two
    # segments (headers over 40 bytes take their size off it) is left alone.
    max_seg_payload: int
    ports: tuple[int, ...]  # destination ports
    mark: int  # govpass's mark: packets carrying any of its bits are left alone
    local: bool  # host mode (packets with a socket) or router mode (without)
    l2: int = 14  # link header bytes before the IP header (14 Ethernet, 0 raw IP)

    def __post_init__(self) -> None:
        if not 1 <= self.chunk <= CHUNK_MAX:
            raise ValueError(f"chunk must be in 1..{CHUNK_MAX}, got {self.chunk}")
        if not self.min_payload <= self.max_payload <= PAYLOAD_MAX:
            raise ValueError(f"max_payload must be in {self.min_payload}..{PAYLOAD_MAX}")
        if not 1 <= len(self.ports) <= PORTS_MAX or any(not 1 <= p <= 0xFFFF for p in self.ports):
            raise ValueError(f"ports must be 1 to {PORTS_MAX} ports in 1..65535, got {self.ports}")
        if self.max_seg_payload < 1:
            raise ValueError(f"max_seg_payload must be at least 1, got {self.max_seg_payload}")
        if not 0 < self.mark <= 0xFFFFFFFF:
            raise ValueError(f"mark must be a non-zero 32-bit value, got {self.mark:#x}")
        if self.l2 not in (0, 14):
            raise ValueError(f"l2 must be 0 or 14, got {self.l2}")

    @property
    def min_payload(self) -> int:
        """The smallest payload split: a record header and type, more than ``chunk``."""
        return max(6, self.chunk + 1)


class Loaded:
    """The program for one link-header size, with its scratch and counter maps,
    as open file descriptors. Attach it with :meth:`attach`; each returned link
    keeps it on its interface until the link's descriptor is closed."""

    def __init__(self, params: Params) -> None:
        self.params = params
        fields = {**asdict(params), "ports": list(params.ports)}
        self.prog_fd, self.scratch_fd, self.counters_fd = _core.ksplit_load(**fields)

    def attach(self, ifindex: int) -> int:
        """Attaches to ``ifindex``'s egress (tcx); returns the link's descriptor."""
        return _core.ksplit_attach(self.prog_fd, ifindex)

    def counters(self) -> dict[str, int]:
        """The counters, summed over CPUs."""
        return dict(zip(COUNTERS, _core.ksplit_counters(self.counters_fd), strict=True))

    def close(self) -> None:
        for fd in (self.prog_fd, self.counters_fd, self.scratch_fd):
            if fd >= 0:
                os.close(fd)
        self.prog_fd = self.counters_fd = self.scratch_fd = -1

    def __enter__(self) -> Loaded:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
