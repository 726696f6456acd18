"""Real traffic through the installed rules: what reaches NFQUEUE, per connection.

Host mode: the client namespace carries the rules and nfq_consumer.py, which
stands in for the daemon (accepts every packet with the govpass mark).  Router
mode: the same in a router namespace between client and server, rules on the
router's WAN interface.  The server answers TLS and plain TCP on :443.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from govpass.rules import RuleSpec, install, remove
from govpass.rules import nftables as nft
from rules_lab import HERE, Lab

pytestmark = pytest.mark.netns

MARK = 0x10000000
WATCH = 0x20000000
QUEUE = 200
BULK_BYTES = 1 << 20
TLS_CONNS = 5

IPT_BACKENDS = ["iptables-nft", "iptables-legacy"]


def is_client_hello_head(head: str) -> bool:
    raw = bytes.fromhex(head)
    return len(raw) == 6 and raw[0] == 0x16 and raw[1] == 0x03 and raw[5] == 0x01


class Consumer:
    def __init__(self, lab: Lab, hold: bool = False) -> None:
        self.log = lab.workdir / f"nfq-{time.monotonic_ns()}.jsonl"
        self.log.touch()
        args = [sys.executable, str(HERE / "nfq_consumer.py"), str(QUEUE), hex(MARK)]
        args.append(str(self.log))
        if hold:
            args.append("--hold")
        self.proc = lab.gateway.spawn(*args)

    def packets(self) -> list[dict[str, Any]]:
        time.sleep(0.3)  # let the consumer flush verdicts of the last packets
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def run_client(lab: Lab, *args: str) -> dict[str, Any]:
    res = lab.client.run(sys.executable, str(HERE / "tls_peer.py"), "client", *args)
    return json.loads(res.stdout)


def ct_marks(lab: Lab) -> list[int]:
    """ct marks of all tracked TCP/443 flows where the rules are."""
    res = lab.gateway.run("conntrack", "-L", "-p", "tcp", "--dport", "443", check=False)
    return [int(m) for m in re.findall(r"\bmark=(\d+)", res.stdout)]


def chain_entries(lab: Lab, backend: str, family: str) -> int:
    """Packets that took the OUTPUT/FORWARD -> GOVPASS jump (iptables-save -c counters)."""
    tool = ("iptables" if family == "ipv4" else "ip6tables") + backend.removeprefix("iptables")
    dump = lab.gateway.run(f"{tool}-save", "-c", "-t", "mangle").stdout
    hits = re.findall(r"^\[(\d+):\d+\] -A (?:OUTPUT|FORWARD) .*-j GOVPASS$", dump, re.M)
    return sum(int(h) for h in hits)


def per_port(packets: list[dict[str, Any]]) -> Counter[int]:
    return Counter(p["sport"] for p in packets)


def server_addr(lab: Lab, family: str) -> str:
    return lab.v4_server if family == "ipv4" else lab.v6_server


def spec_for(lab: Lab, prefilter: str = "conntrack") -> RuleSpec:
    base = RuleSpec(queue_num=QUEUE, mark=MARK, watch_mark=WATCH, prefilter=prefilter)  # type: ignore[arg-type]
    if lab.router is None:
        return base
    assert lab.wan_dev is not None
    return replace(base, mode="router", interfaces=(lab.wan_dev,))


@pytest.fixture(params=["host", "router"])
def topo(request: pytest.FixtureRequest) -> Lab:
    lab: Lab = request.getfixturevalue("lab" if request.param == "host" else "router_lab")
    return lab


@pytest.fixture
def installed(topo: Lab, request: pytest.FixtureRequest) -> Iterator[str]:
    backend = request.param
    result = install(spec_for(topo), topo.gateway.runner, backend)
    assert result.backend == backend
    try:
        yield backend
    finally:
        remove(topo.gateway.runner)


def queue_tls_bulk_plain(
    lab: Lab, family: str
) -> tuple[list[dict[str, Any]], Counter[int], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """TLS connections, one bulk transfer each way and plain TCP to :443 through the
    installed rules: each works, and exactly its ClientHello reached the queue.
    Returns (packets, per-port counts, tls, bulk, plain)."""
    consumer = Consumer(lab)
    host = server_addr(lab, family)

    tls = run_client(lab, "tls", host, "443", lab.cafile, str(TLS_CONNS))
    bulk = run_client(lab, "bulk", host, "443", lab.cafile, str(BULK_BYTES))
    plain = run_client(lab, "plain", host, "443", lab.cafile)
    packets = consumer.packets()

    # the connections themselves work through the queue
    assert tls["replies"] == [f"OK {i}" for i in range(TLS_CONNS)]
    assert bulk["upload_reply"] == f"GOT {BULK_BYTES}"
    assert bulk["downloaded"] == BULK_BYTES
    assert plain["reply"] == "PLAIN hello, not tls"

    counts = per_port(packets)
    for port in [*tls["ports"], *bulk["ports"]]:
        assert counts[port] == 1, f"port {port}: {counts[port]} packets queued"
    assert sum(counts.values()) == len(tls["ports"]) + len(bulk["ports"])
    for pkt in packets:
        assert pkt["v"] == (4 if family == "ipv4" else 6)
        assert is_client_hello_head(pkt["head"]), f"non-ClientHello queued: {pkt}"
    return packets, counts, tls, bulk, plain


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("installed", IPT_BACKENDS, indirect=True)
def test_one_packet_per_tls_connection(topo: Lab, installed: str, family: str) -> None:
    lab = topo
    packets, counts, tls, bulk, plain = queue_tls_bulk_plain(lab, family)
    assert counts[plain["ports"][0]] == 0
    for pkt in packets:
        assert pkt["flags"] & 0x02 == 0, "SYN queued"
        assert pkt["payload_len"] > 0, "pure ACK queued"
        assert pkt["mark_in"] & MARK == 0
    # GOVPASS_POST cleared the watch bit once the consumer's verdict carried the mark
    marks = ct_marks(lab)
    assert marks, "no conntrack entries seen"
    assert all(m & WATCH == 0 for m in marks), marks
    entered = chain_entries(lab, installed, family)
    print(
        f"\n[{installed} {spec_for(lab).mode} {family}] {entered} packets to :443 entered GOVPASS, "
        f"{sum(counts.values())} queued; queued per connection: "
        f"{sum(counts.values())}/{len(tls['ports']) + len(bulk['ports']) + 1} connections "
        f"(tls={[counts[p] for p in tls['ports']]}, bulk={[counts[p] for p in bulk['ports']]}, "
        f"plain={counts[plain['ports'][0]]})"
    )


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("installed", IPT_BACKENDS, indirect=True)
def test_watch_bit_queues_second_segment(topo: Lab, installed: str, family: str) -> None:
    """The consumer holds the ClientHello head; the rest arrives through the watch bit."""
    lab = topo
    consumer = Consumer(lab, hold=True)
    out = run_client(lab, "split", server_addr(lab, family), "443", lab.cafile)
    packets = consumer.packets()

    assert out["reply"] == "OK split"
    port = out["ports"][0]
    flow = [p for p in packets if p["sport"] == port]
    assert len(flow) == 2, flow
    first, second = sorted(flow, key=lambda p: p["seq"])
    assert is_client_hello_head(first["head"])
    assert first["verdict"] == "held-until-next"  # released because the 2nd was queued
    assert not is_client_hello_head(second["head"])
    assert first["payload_len"] + second["payload_len"] == out["hello_len"]
    assert second["seq"] == (first["seq"] + first["payload_len"]) % 2**32
    assert len(packets) == 2  # nothing after the decision: the watch bit was cleared
    assert all(m & WATCH == 0 for m in ct_marks(lab))


def _counters(listing: str) -> list[int]:
    return [int(n) for n in re.findall(r"counter packets (\d+)", listing)]


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_nft_logic_with_simulated_verdict(topo: Lab, family: str) -> None:
    """nft rules with real traffic.  This kernel has no nft_queue, so each queue
    statement is replaced by what the daemon's verdict does (set the mark) plus a
    counter; everything else (@ih, ct original packets, ct mark) is the real script.
    """
    lab = topo
    spec = spec_for(lab)
    queue = nft.queue_statement(spec)
    script = nft.render_install(spec)
    assert script.count(queue) == 2
    simulated = script.replace(queue, f"meta mark set {MARK:#x} counter")
    res = lab.gateway.runner.run(["nft", "-f", "-"], input_text=simulated)
    assert res.ok
    try:
        host = server_addr(lab, family)
        tls = run_client(lab, "tls", host, "443", lab.cafile, str(TLS_CONNS))
        bulk = run_client(lab, "bulk", host, "443", lab.cafile, str(BULK_BYTES))
        plain = run_client(lab, "plain", host, "443", lab.cafile)
        assert plain["reply"] == "PLAIN hello, not tls"
        listing = lab.gateway.run("nft", "list", "table", "inet", "govpass").stdout
        watch_hits, hello_hits = _counters(listing)
        assert hello_hits == len(tls["ports"]) + len(bulk["ports"])
        assert watch_hits == 0
        assert all(m & WATCH == 0 for m in ct_marks(lab))
    finally:
        remove(lab.gateway.runner)


@pytest.mark.parametrize("installed", ["iptables-nft"], indirect=True)
@pytest.mark.parametrize("topo", ["host"], indirect=True)
def test_hello_larger_than_mss_reaches_queue_whole(topo: Lab, installed: str) -> None:
    """One 4000-byte write: the hook sees one GSO skb (one u32 hit), user space
    gets every MSS-sized segment of it (nfqueue segments GSO skbs for listeners
    that did not ask for NFQA_CFG_F_GSO); nothing is lost or queued twice."""
    lab = topo
    consumer = Consumer(lab)
    record = bytes([0x16, 0x03, 0x01, 0x0F, 0x9B, 0x01]) + b"a" * 3994
    code = (
        "import socket,sys,time;"
        f"s=socket.create_connection(('{lab.v4_server}',443));"
        f"s.sendall(bytes.fromhex('{record.hex()}'));"
        "print(s.getsockname()[1],flush=True);time.sleep(0.3);s.close()"
    )
    port = int(lab.client.run(sys.executable, "-c", code).stdout)
    flow = sorted((p for p in consumer.packets() if p["sport"] == port), key=lambda p: p["seq"])
    assert is_client_hello_head(flow[0]["head"])
    assert sum(p["payload_len"] for p in flow) == len(record)
    for prev, nxt in itertools.pairwise(flow):
        assert nxt["seq"] == (prev["seq"] + prev["payload_len"]) % 2**32


def test_connbytes_bound_holds_when_verdicts_carry_no_mark(lab: Lab) -> None:
    """A daemon that never marks its verdicts leaves the watch bit set; the
    connbytes bound still stops queueing at packet N of each connection.
    Per connection: #1 SYN returns, #2 ACK passes, #3 ClientHello (u32) and
    #4..#N-1 (watch bit) are queued, #N onwards return."""
    bound = 6
    spec = RuleSpec(
        queue_num=QUEUE, mark=MARK, watch_mark=WATCH, max_packets=bound, ipv6=False,
        prefilter="conntrack",
    )  # fmt: skip
    install(spec, lab.client.runner, "iptables-nft")
    try:
        log = lab.workdir / "nomark.jsonl"
        log.touch()
        lab.client.spawn(sys.executable, str(HERE / "nfq_consumer.py"), str(QUEUE), "0", str(log))
        bulk = run_client(lab, "bulk", lab.v4_server, "443", lab.cafile, str(BULK_BYTES))
        assert bulk["upload_reply"] == f"GOT {BULK_BYTES}"
        assert bulk["downloaded"] == BULK_BYTES
        dump = lab.client.run("iptables-nft", "-t", "mangle", "-L", "GOVPASS", "-v", "-x", "-n")
        rows = [ln.split() for ln in dump.stdout.splitlines()[2:]]
        hits = {" ".join(r[2:]): int(r[0]) for r in rows}
        by_kind = {
            kind: sum(n for text, n in hits.items() if kind(text))
            for kind in (
                lambda t: t.startswith("RETURN") and "connbytes" in t,
                lambda t: t.startswith("NFQUEUE") and "connmark" in t,
                lambda t: t.startswith("NFQUEUE") and "u32" in t,
            )
        }
        connbytes_returns, watch_queued, hello_queued = by_kind.values()
        conns = len(bulk["ports"])
        assert hello_queued == conns
        assert watch_queued == conns * (bound - 4)
        assert connbytes_returns > 0
        assert all(m & WATCH for m in ct_marks(lab))  # nobody cleared it
    finally:
        remove(lab.client.runner)


# -- the eBPF pre-filter ---------------------------------------------------------------------


@pytest.fixture
def bpf_installed(topo: Lab) -> Iterator[Lab]:
    result = install(spec_for(topo, "bpf"), topo.gateway.runner, "iptables-nft")
    assert result.prefilter == "bpf", result.prefilter_reason
    try:
        yield topo
    finally:
        remove(topo.gateway.runner)


def tracked_flows(lab: Lab) -> int:
    res = lab.gateway.run("conntrack", "-L", check=False)
    return sum(1 for line in res.stdout.splitlines() if line.strip())


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_bpf_one_packet_per_tls_connection(bpf_installed: Lab, family: str) -> None:
    """Same traffic as with the conntrack pre-filter: one packet per connection, the
    ClientHello; bulk data, SYNs, pure ACKs and plain TCP stay in the kernel."""
    lab = bpf_installed
    queue_tls_bulk_plain(lab, family)
    if lab.router is None:
        # Nothing in the host's rules asks for connection tracking.
        assert tracked_flows(lab) == 0


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_bpf_queues_second_segment(bpf_installed: Lab, family: str) -> None:
    """The consumer holds the ClientHello head; the program queues the rest of the
    record by its sequence numbers, and nothing after the record."""
    lab = bpf_installed
    consumer = Consumer(lab, hold=True)
    out = run_client(lab, "split", server_addr(lab, family), "443", lab.cafile)
    packets = consumer.packets()

    assert out["reply"] == "OK split"
    flow = [p for p in packets if p["sport"] == out["ports"][0]]
    assert len(flow) == 2, flow
    first, second = sorted(flow, key=lambda p: p["seq"])
    assert is_client_hello_head(first["head"])
    assert first["verdict"] == "held-until-next"
    assert first["payload_len"] + second["payload_len"] == out["hello_len"]
    assert second["seq"] == (first["seq"] + first["payload_len"]) % 2**32
    assert len(packets) == 2
