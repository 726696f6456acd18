"""iptables / ip6tables rules for govpass, planned as argv lists (pure functions).

Layout, all in the ``mangle`` table::

    OUTPUT (host) or FORWARD -o WAN (router)
        -p tcp --dport PORTS  -> GOVPASS
    POSTROUTING
        -p tcp --dport PORTS  -> GOVPASS_POST

    GOVPASS                                      order matters
        mark has MARK bit            RETURN      our own injected segments
        -o lo / excluded interfaces  RETURN
        SYN flag set                 RETURN      never SYNs (not even TFO SYN+data)
        conntrack packets >= N       RETURN      never bulk data
        ct mark has WATCH bit        NFQUEUE     flow still being collected
        payload = 16 03 .. .. .. 01  CONNMARK |= WATCH
        payload = 16 03 .. .. .. 01  NFQUEUE
    GOVPASS_POST
        mark has MARK bit and ct mark has WATCH bit -> CONNMARK &= ~WATCH

    with the eBPF pre-filter (``spec.uses_bpf``), instead
    GOVPASS                                      no connection tracking
        bpf program matches          goto GOVPASS_Q
                                                 a ClientHello record's first packet,
                                                 or a later one of a record still in
                                                 flight (see govpass.bpf); all other
                                                 packets (bulk) cost this one rule
    GOVPASS_Q
        mark has MARK bit            RETURN
        -o lo / excluded interfaces  RETURN
        SYN flag set                 RETURN
                                     NFQUEUE
    and no GOVPASS_POST. (The bpf match is not on the jump rule: deleting a rule
    by its text makes iptables reopen the program by path, which is gone after
    install; chains are flushed instead.)

    with ``block_quic`` "all" or "listed", also
    OUTPUT (host) or FORWARD -o WAN (router)
        -p udp --dport PORTS  -> GOVPASS_QUIC
    GOVPASS_QUIC
        -o lo / excluded interfaces  RETURN
        QUIC long header, type Initial or 0-RTT   DROP             "all"
        conntrack packets <= 8, the same u32      NFQUEUE          "listed" (govpass
                                                                   drops listed names)

    with ``inbound`` (auto-learning), also
    INPUT (host) or FORWARD -i WAN (router)
        -p tcp --sport PORTS  -> GOVPASS_IN
    GOVPASS_IN
        -i lo / excluded interfaces  RETURN
        conntrack reply packets > 16 RETURN      only the first few replies
        RST flag set                 NFQUEUE
        payload = 16 03 ..           NFQUEUE     e.g. the ServerHello

The TCP/port filter sits on the jump rule rather than inside GOVPASS so that
unrelated packets cost one rule evaluation, not a chain traversal.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from govpass.rules.spec import INBOUND_PACKETS, QUIC_PACKETS, Family, RuleSpec

TABLE = "mangle"
CHAIN = "GOVPASS"
POST_CHAIN = "GOVPASS_POST"
QUEUE_CHAIN = "GOVPASS_Q"
IN_CHAIN = "GOVPASS_IN"
QUIC_CHAIN = "GOVPASS_QUIC"
PROBE_CHAIN = "GOVPASS_PROBE"
WAIT = "-w"  # wait for the xtables lock instead of failing when another tool holds it
OUR_CHAINS = (CHAIN, POST_CHAIN, QUEUE_CHAIN, IN_CHAIN, QUIC_CHAIN, PROBE_CHAIN)

Argv = list[str]

# u32 walks the headers itself: "A@B" reads word A, moves the base by its value,
# then reads B relative to the new base.
#   IPv4: 0>>22&0x3C = IHL*4 (start of TCP); at TCP+12, >>26&0x3C = data offset*4.
#   IPv6: TCP assumed at 40 (no extension headers; next header byte must be 6),
#   so the payload starts 40 bytes after the data-offset jump.
# Payload word 0 >> 16 = bytes 0..1 (0x16 handshake, 0x03 major version);
# payload word 2 & 0xFF = byte 5 (handshake type 1 = ClientHello).
# A packet without at least 6 payload bytes makes u32 read past the end, which
# is a non-match: SYNs and pure ACKs can never match.
_V4_PAYLOAD = "0>>22&0x3C@12>>26&0x3C@"
_V6_PAYLOAD = "52>>26&0x3C@"
U32_CLIENT_HELLO_V4 = (
    "4&0x1FFF=0"  # first fragment (or unfragmented) only
    f"&&{_V4_PAYLOAD}0>>16=0x1603"
    f"&&{_V4_PAYLOAD}2&0xFF=0x1"
)
U32_CLIENT_HELLO_V6 = (
    "4>>8&0xFF=0x6"  # next header is TCP, i.e. no extension headers
    f"&&{_V6_PAYLOAD}40>>16=0x1603"
    f"&&{_V6_PAYLOAD}42&0xFF=0x1"
)
# Replies (inbound): any TLS handshake record, e.g. the ServerHello.
U32_TLS_RECORD_V4 = f"4&0x1FFF=0&&{_V4_PAYLOAD}0>>16=0x1603"
U32_TLS_RECORD_V6 = f"4>>8&0xFF=0x6&&{_V6_PAYLOAD}40>>16=0x1603"


# QUIC: the first UDP payload byte of a long-header packet is 1 1 T T x x x x;
# type TT = 00 is Initial in QUIC v1 (01 is 0-RTT; in QUIC v2 01 is Initial),
# so the top nibble is 0xC or 0xD. UDP's header is 8 bytes.
U32_QUIC_INITIAL_V4 = "4&0x1FFF=0&&0>>22&0x3C@8>>24&0xF0=0xC0:0xD0"
U32_QUIC_INITIAL_V6 = "4>>8&0xFF=0x11&&48>>24&0xF0=0xC0:0xD0"


def binary_for(family: Family, variant: str | None = None) -> str:
    """`iptables` / `ip6tables`, optionally with a backend suffix (`legacy`, `nft`)."""
    base = "iptables" if family == "ipv4" else "ip6tables"
    return f"{base}-{variant}" if variant else base


def u32_client_hello(family: Family) -> str:
    return U32_CLIENT_HELLO_V4 if family == "ipv4" else U32_CLIENT_HELLO_V6


def u32_tls_record(family: Family) -> str:
    return U32_TLS_RECORD_V4 if family == "ipv4" else U32_TLS_RECORD_V6


def _port_match(ports: Sequence[int], side: str = "d", proto: str = "tcp") -> Argv:
    """`side` "d": destination ports (outbound), "s": source ports (replies)."""
    if len(ports) == 1:
        return ["-p", proto, "-m", proto, f"--{side}port", str(ports[0])]
    return ["-p", proto, "-m", "multiport", f"--{side}ports", ",".join(str(p) for p in ports)]


def _queue_target(spec: RuleSpec) -> Argv:
    if spec.queue_count == 1:
        target = ["-j", "NFQUEUE", "--queue-num", str(spec.queue_num)]
    else:
        # The kernel's balance hash covers the address pair and protocol, not the
        # ports: per flow stable, but all flows between two hosts share a queue.
        # --queue-cpu-fanout (by CPU) would not keep a locally sent flow on one queue.
        target = ["-j", "NFQUEUE", "--queue-balance", f"{spec.queue_num}:{spec.queue_last}"]
    if spec.bypass:
        target.append("--queue-bypass")
    return target


def _mask(value: int) -> str:
    return f"{value:#x}/{value:#x}"


def chain_rules(spec: RuleSpec, family: Family, chain: str = CHAIN) -> list[Argv]:
    """The body of GOVPASS as `-A CHAIN ...` argument lists (without binary and table)."""
    rules: list[Argv] = [["-m", "mark", "--mark", _mask(spec.mark), "-j", "RETURN"]]
    if spec.mode == "host":
        rules.append(["-o", "lo", "-j", "RETURN"])
    for ifname in spec.exclude_interfaces:
        rules.append(["-o", ifname, "-j", "RETURN"])
    rules.append(["-p", "tcp", "-m", "tcp", "--tcp-flags", "SYN", "SYN", "-j", "RETURN"])
    if spec.uses_bpf:  # GOVPASS_Q: GOVPASS's program already chose the packet
        rules.append(_queue_target(spec))
        return [["-A", chain, *rule] for rule in rules]
    rules.append(
        [
            "-m", "connbytes", "--connbytes", f"{spec.max_packets}:",
            "--connbytes-dir", "original", "--connbytes-mode", "packets",
            "-j", "RETURN",
        ]
    )  # fmt: skip
    rules.append(["-m", "connmark", "--mark", _mask(spec.watch_mark), *_queue_target(spec)])
    hello = ["-m", "u32", "--u32", u32_client_hello(family)]
    rules.append([*hello, "-j", "CONNMARK", "--or-mark", f"{spec.watch_mark:#x}"])
    rules.append([*hello, *_queue_target(spec)])
    return [["-A", chain, *rule] for rule in rules]


def inbound_rules(spec: RuleSpec, family: Family, chain: str = IN_CHAIN) -> list[Argv]:
    """The body of GOVPASS_IN (replies for auto-learning) as `-A CHAIN ...` lists."""
    rules: list[Argv] = []
    if spec.mode == "host":
        rules.append(["-i", "lo", "-j", "RETURN"])
    for ifname in spec.exclude_interfaces:
        rules.append(["-i", ifname, "-j", "RETURN"])
    rules.append(
        [
            "-m", "connbytes", "--connbytes", f"{INBOUND_PACKETS + 1}:",
            "--connbytes-dir", "reply", "--connbytes-mode", "packets",
            "-j", "RETURN",
        ]
    )  # fmt: skip
    rules.append(["-p", "tcp", "-m", "tcp", "--tcp-flags", "RST", "RST", *_queue_target(spec)])
    rules.append(["-m", "u32", "--u32", u32_tls_record(family), *_queue_target(spec)])
    return [["-A", chain, *rule] for rule in rules]


def quic_rules(spec: RuleSpec, family: Family, chain: str = QUIC_CHAIN) -> list[Argv]:
    """The body of GOVPASS_QUIC: drop QUIC Initial packets (UDP to the ports), or
    with "listed" queue a flow's first few to govpass, which drops those of names
    it would split."""
    rules: list[Argv] = []
    if spec.mode == "host":
        rules.append(["-o", "lo", "-j", "RETURN"])
    for ifname in spec.exclude_interfaces:
        rules.append(["-o", ifname, "-j", "RETURN"])
    u32 = U32_QUIC_INITIAL_V4 if family == "ipv4" else U32_QUIC_INITIAL_V6
    initial = ["-m", "u32", "--u32", u32]
    if spec.block_quic == "listed":
        first = [
            "-m", "connbytes", "--connbytes", f"0:{QUIC_PACKETS}",
            "--connbytes-dir", "original", "--connbytes-mode", "packets",
        ]  # fmt: skip
        rules.append([*first, *initial, *_queue_target(spec)])
    else:
        rules.append([*initial, "-j", "DROP"])
    return [["-A", chain, *rule] for rule in rules]


def post_rules(spec: RuleSpec) -> list[Argv]:
    if spec.uses_bpf:
        return []
    return [
        [
            "-A", POST_CHAIN, "-m", "mark", "--mark", _mask(spec.mark),
            "-m", "connmark", "--mark", _mask(spec.watch_mark),
            "-j", "CONNMARK", "--and-mark", f"{spec.watch_clear_mask:#x}",
        ]
    ]  # fmt: skip


def bpf_match(spec: RuleSpec, family: Family) -> Argv:
    return ["-m", "bpf", "--object-pinned", spec.bpf_pin(family)]


def bpf_chain_rules(spec: RuleSpec, family: Family, chain: str = CHAIN) -> list[Argv]:
    """The body of GOVPASS with the eBPF pre-filter: the program, then GOVPASS_Q."""
    return [["-A", chain, *bpf_match(spec, family), "-g", QUEUE_CHAIN]]


def jump_rules(spec: RuleSpec) -> list[Argv]:
    ports = _port_match(spec.ports)
    hook = "OUTPUT" if spec.mode == "host" else "FORWARD"
    outs: list[Argv] = [["-o", ifname] for ifname in spec.interfaces] or [[]]
    jumps = [["-I", hook, "1", *out, *ports, "-j", CHAIN] for out in outs]
    if not spec.uses_bpf:
        jumps.append(["-I", "POSTROUTING", "1", *ports, "-j", POST_CHAIN])
    if spec.block_quic != "off":
        udp = _port_match(spec.ports, proto="udp")
        jumps += [["-I", hook, "1", *out, *udp, "-j", QUIC_CHAIN] for out in outs]
    if spec.inbound:
        in_hook = "INPUT" if spec.mode == "host" else "FORWARD"
        ins: list[Argv] = [["-i", ifname] for ifname in spec.interfaces] or [[]]
        replies = _port_match(spec.ports, "s")
        jumps += [["-I", in_hook, "1", *i, *replies, "-j", IN_CHAIN] for i in ins]
    return jumps


def plan_install(spec: RuleSpec, family: Family, binary: str | None = None) -> list[Argv]:
    """Full argv lists that install the rules for one family, in execution order.

    Chains are filled before anything jumps to them, so traffic never sees a
    half-built chain.
    """
    prog = binary or binary_for(family)
    body = [["-N", CHAIN]]
    if spec.uses_bpf:
        body += [
            ["-N", QUEUE_CHAIN],
            *chain_rules(spec, family, QUEUE_CHAIN),
            *bpf_chain_rules(spec, family),
        ]
    else:
        body += [["-N", POST_CHAIN], *chain_rules(spec, family), *post_rules(spec)]
    if spec.inbound:
        body += [["-N", IN_CHAIN], *inbound_rules(spec, family)]
    if spec.block_quic != "off":
        body += [["-N", QUIC_CHAIN], *quic_rules(spec, family)]
    body += jump_rules(spec)
    return [[prog, WAIT, "-t", TABLE, *args] for args in body]


def plan_probe(spec: RuleSpec, family: Family, binary: str) -> tuple[list[Argv], list[Argv]]:
    """(load, unload) argv lists that try every match/target govpass uses in a spare chain."""
    load = [[binary, WAIT, "-t", TABLE, "-N", PROBE_CHAIN]]
    load += [[binary, WAIT, "-t", TABLE, *r] for r in chain_rules(spec, family, PROBE_CHAIN)]
    load += [
        [binary, WAIT, "-t", TABLE, *[PROBE_CHAIN if a == POST_CHAIN else a for a in r]]
        for r in post_rules(spec)
    ]
    if spec.uses_bpf:
        probe = [*bpf_match(spec, family), "-j", "RETURN"]
        load.append([binary, WAIT, "-t", TABLE, "-A", PROBE_CHAIN, *probe])
    if spec.inbound:
        load += [[binary, WAIT, "-t", TABLE, *r] for r in inbound_rules(spec, family, PROBE_CHAIN)]
    if spec.block_quic != "off":
        load += [[binary, WAIT, "-t", TABLE, *r] for r in quic_rules(spec, family, PROBE_CHAIN)]
    unload = [
        [binary, WAIT, "-t", TABLE, "-F", PROBE_CHAIN],
        [binary, WAIT, "-t", TABLE, "-X", PROBE_CHAIN],
    ]
    return load, unload


@dataclass(frozen=True)
class MangleState:
    """What an iptables-save dump says about govpass in the mangle table."""

    chains: tuple[str, ...]  # our chains that exist
    jumps: tuple[tuple[str, ...], ...]  # `-A CHAIN ... -j GOVPASS*` rules in other chains
    rules: tuple[tuple[str, ...], ...]  # `-A GOVPASS* ...` rules

    @property
    def empty(self) -> bool:
        return not (self.chains or self.jumps or self.rules)


def mangle_section(save_text: str) -> list[str]:
    """Lines of the `*mangle` table in iptables-save output (empty if absent)."""
    lines: list[str] = []
    inside = False
    for raw in save_text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            inside = line == f"*{TABLE}"
            continue
        if inside:
            if line == "COMMIT":
                inside = False
            elif line and not line.startswith("#"):
                lines.append(line)
    return lines


def parse_save(save_text: str) -> MangleState:
    chains: list[str] = []
    jumps: list[tuple[str, ...]] = []
    rules: list[tuple[str, ...]] = []
    for line in mangle_section(save_text):
        if line.startswith(":"):
            name = line[1:].split()[0]
            if name in OUR_CHAINS:
                chains.append(name)
            continue
        if line.startswith("["):  # `iptables-save -c` counters: "[pkts:bytes] -A ..."
            line = line.split("] ", 1)[-1]
        if not line.startswith("-A "):
            continue
        argv = tuple(shlex.split(line))
        if argv[1] in OUR_CHAINS:
            rules.append(argv)
        elif _jump_target(argv) in OUR_CHAINS:
            jumps.append(argv)
    return MangleState(tuple(chains), tuple(jumps), tuple(rules))


def _jump_target(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg in ("-j", "--jump", "-g", "--goto"):
            return argv[i + 1]
    return None


def plan_remove(state: MangleState, binary: str) -> list[Argv]:
    """argv lists that delete every govpass jump, then flush and delete our chains."""
    cmds: list[Argv] = [[binary, WAIT, "-t", TABLE, "-D", *jump[1:]] for jump in state.jumps]
    cmds += [[binary, WAIT, "-t", TABLE, "-F", chain] for chain in state.chains]
    cmds += [[binary, WAIT, "-t", TABLE, "-X", chain] for chain in state.chains]
    return cmds


def describe(state: MangleState) -> list[str]:
    """iptables -S style lines for `show`."""
    lines = [f"-N {chain}" for chain in state.chains]
    lines += [shlex.join(rule) for rule in state.rules]
    lines += [shlex.join(jump) for jump in state.jumps]
    return lines
