"""The same interception logic as :mod:`govpass.rules.iptables`, as one nft script.

Everything lives in its own table ``inet govpass``.  The install script first
declares, deletes and then re-creates the table, so ``nft -f -`` replaces any
earlier copy in a single kernel transaction: applying it twice leaves one copy,
and a failure leaves the previous state untouched.

``@ih`` is the payload after the TCP header (the kernel computes the offset from
the data offset, and it skips IPv6 extension headers, unlike u32).  Non-first
fragments have no inner header and therefore never match.
"""

from __future__ import annotations

from govpass.rules.spec import INBOUND_PACKETS, QUIC_PACKETS, RuleSpec

TABLE_FAMILY = "inet"
TABLE_NAME = "govpass"
TABLE = f"{TABLE_FAMILY} {TABLE_NAME}"
CHAIN = "govpass"
IN_CHAIN = "govpass_in"  # replies, for auto-learning (RuleSpec.inbound)
QUIC_CHAIN = "govpass_quic"  # RuleSpec.block_quic "all" / "listed"
# First UDP payload byte: long header, type Initial/0-RTT (QUIC v1 and v2).
NFT_QUIC_INITIAL = "@th,64,8 & 0xf0 { 0xc0, 0xd0 }"

# payload byte 0 = 0x16 (handshake), byte 1 = 0x03, byte 5 = 0x01 (ClientHello)
NFT_CLIENT_HELLO = "@ih,0,16 0x1603 @ih,40,8 0x1"
# a reply starting like any handshake record (e.g. the ServerHello)
NFT_TLS_RECORD = "@ih,0,16 0x1603"


def _quote(ifname: str) -> str:
    # iptables' "eth+" wildcard is "eth*" in nft.
    return '"' + (ifname[:-1] + "*" if ifname.endswith("+") else ifname) + '"'


def _ports(spec: RuleSpec, side: str = "d", proto: str = "tcp") -> str:
    """`side` "d": destination ports (outbound), "s": source ports (replies)."""
    if len(spec.ports) == 1:
        return f"{proto} {side}port {spec.ports[0]}"
    return f"{proto} {side}port {{ " + ", ".join(str(p) for p in spec.ports) + " }"


def _family_match(spec: RuleSpec) -> str:
    if spec.ipv4 and spec.ipv6:
        return ""
    return "meta nfproto ipv4 " if spec.ipv4 else "meta nfproto ipv6 "


def queue_statement(spec: RuleSpec) -> str:
    if spec.queue_count == 1:
        stmt = f"queue num {spec.queue_num}"
        flags = ["bypass"] if spec.bypass else []
    else:
        # Without `fanout` nft spreads a range by a hash of the addresses and
        # protocol, not the ports (the same for both directions), like iptables'
        # --queue-balance: one flow always reaches one worker, and so does every
        # flow between the same two hosts. `fanout` would spread by CPU, which
        # does not keep a locally sent flow on one queue.
        stmt = f"queue num {spec.queue_num}-{spec.queue_last}"
        flags = ["bypass"] if spec.bypass else []
    # The counter: what was queued or passed by, for govpass.queue_counters.
    stmt = f"counter {stmt}"
    return f"{stmt} {','.join(flags)}" if flags else stmt


def _has(what: str, value: int) -> str:
    return f"{what} & {value:#x} == {value:#x}"


def chain_body(spec: RuleSpec) -> list[str]:
    """Rules of the regular chain ``govpass`` (same order as the iptables chain)."""
    queue = queue_statement(spec)
    rules = [f"{_has('meta mark', spec.mark)} return"]
    if spec.mode == "host":
        rules.append('oifname "lo" return')
    rules += [f"oifname {_quote(name)} return" for name in spec.exclude_interfaces]
    rules += [
        "tcp flags & syn == syn return",
        f"ct original packets >= {spec.max_packets} return",
        f"{_has('ct mark', spec.watch_mark)} {queue}",
        f"{NFT_CLIENT_HELLO} ct mark set ct mark | {spec.watch_mark:#x} {queue}",
    ]
    return rules


def hook_rules(spec: RuleSpec) -> list[str]:
    match = f"{_family_match(spec)}meta l4proto tcp {_ports(spec)}"
    outs = [f"oifname {_quote(name)} " for name in spec.interfaces] or [""]
    rules = [f"{out}{match} jump {CHAIN}" for out in outs]
    if spec.block_quic != "off":
        udp = f"{_family_match(spec)}meta l4proto udp {_ports(spec, proto='udp')}"
        rules += [f"{out}{udp} jump {QUIC_CHAIN}" for out in outs]
    return rules


def quic_body(spec: RuleSpec) -> list[str]:
    """Rules of the regular chain ``govpass_quic``: drop QUIC Initial packets, or
    with "listed" queue a flow's first few to govpass (as iptables' GOVPASS_QUIC)."""
    rules = ['oifname "lo" return'] if spec.mode == "host" else []
    rules += [f"oifname {_quote(name)} return" for name in spec.exclude_interfaces]
    if spec.block_quic == "listed":
        first = f"ct original packets < {QUIC_PACKETS + 1}"
        rules.append(f"{first} {NFT_QUIC_INITIAL} {queue_statement(spec)}")
    else:
        rules.append(f"{NFT_QUIC_INITIAL} drop")
    return rules


def inbound_body(spec: RuleSpec) -> list[str]:
    """Rules of the regular chain ``govpass_in`` (same order as iptables' GOVPASS_IN)."""
    queue = queue_statement(spec)
    rules = ['iifname "lo" return'] if spec.mode == "host" else []
    rules += [f"iifname {_quote(name)} return" for name in spec.exclude_interfaces]
    rules += [
        f"ct reply packets > {INBOUND_PACKETS} return",
        f"tcp flags & rst == rst {queue}",
        f"{NFT_TLS_RECORD} {queue}",
    ]
    return rules


def inbound_hook_rules(spec: RuleSpec) -> list[str]:
    match = f"{_family_match(spec)}meta l4proto tcp {_ports(spec, 's')}"
    ins = [f"iifname {_quote(name)} " for name in spec.interfaces] or [""]
    return [f"{i}{match} jump {IN_CHAIN}" for i in ins]


def post_rules(spec: RuleSpec) -> list[str]:
    match = f"{_family_match(spec)}meta l4proto tcp {_ports(spec)}"
    return [
        f"{match} {_has('meta mark', spec.mark)} {_has('ct mark', spec.watch_mark)}"
        f" ct mark set ct mark & {spec.watch_clear_mask:#x}"
    ]


def _chain(name: str, header: str | None, rules: list[str]) -> list[str]:
    lines = [f"\tchain {name} {{"]
    if header:
        lines.append(f"\t\t{header}")
    lines += [f"\t\t{rule}" for rule in rules]
    lines.append("\t}")
    return lines


def render_table(spec: RuleSpec) -> str:
    """The `table inet govpass { ... }` block alone."""
    hook = "output" if spec.mode == "host" else "forward"
    lines = [f"table {TABLE} {{"]
    lines += _chain(
        hook, f"type filter hook {hook} priority mangle; policy accept;", hook_rules(spec)
    )
    lines += _chain(CHAIN, None, chain_body(spec))
    if spec.block_quic != "off":
        lines += _chain(QUIC_CHAIN, None, quic_body(spec))
    lines += _chain(
        "postrouting",
        "type filter hook postrouting priority mangle; policy accept;",
        post_rules(spec),
    )
    if spec.inbound:
        in_hook = "input" if spec.mode == "host" else "forward"
        lines += _chain(
            "inbound",
            f"type filter hook {in_hook} priority mangle; policy accept;",
            inbound_hook_rules(spec),
        )
        lines += _chain(IN_CHAIN, None, inbound_body(spec))
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_install(spec: RuleSpec) -> str:
    """Script for `nft -f -`: replace the govpass table atomically."""
    return render_remove() + render_table(spec)


def render_remove() -> str:
    """Script for `nft -f -` that removes the table, and succeeds when it is absent."""
    # Declaring an existing table is a no-op, so the delete never fails (nft < 1.0.8
    # has no `destroy`).
    return f"table {TABLE}\ndelete table {TABLE}\n"
