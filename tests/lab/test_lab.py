"""The lab itself: topology, server, censors, clients, capture and wire checks.

These tests establish the baseline the govpass end-to-end tests build on: without
govpass a listed name is blocked by each censor and an unlisted one passes. Tests marked
``netns`` need root (CI runs as root) and fail, not skip, without it.
"""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dpkt
import pytest

try:
    import govpass.lab  # noqa: F401
except ModuleNotFoundError as exc:  # running from a source tree without an install
    if exc.name != "govpass":
        raise
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))

from govpass.lab import Lab, LabError, analyze
from govpass.lab.censor import (
    TCP_ACK,
    TCP_SYN,
    FirstPacketCensor,
    build_tcp,
    read_decisions,
)
from govpass.lab.clienthello import name_listed, read_hello
from govpass.lab.clients import kinds_available
from govpass.lab.netns import netns_list

BLOCKED, ALLOWED = "blocked.example", "allowed.example"
FAMILIES = (4, 6)
CLIENT_V4, SERVER_V4 = "198.51.100.2", "203.0.113.2"
CLIENT_V6, SERVER_V6 = "2001:db8:1::2", "2001:db8:3::2"
BLOCKED_TIMEOUT = 3.0


def client_hello(name: str) -> bytes:
    """A real ClientHello record from OpenSSL via memory BIOs."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "lab tests need root (network namespaces, iptables, tcpdump); "
            "run them as root, e.g. in CI or with sudo",
            pytrace=False,
        )


def run_matrix(
    lab: Lab, jobs: list[tuple[str, str, int]], timeout: float = 5.0
) -> dict[tuple[str, str, int], tuple[bool, str]]:
    """Run (client kind, name, family) jobs in parallel; results by job."""
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = pool.map(lambda job: lab.client(*job, timeout=timeout), jobs)
        return dict(zip(jobs, results, strict=True))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_root()
    with Lab() as the_lab:
        the_lab.start_server(names=[BLOCKED, ALLOWED])
        yield the_lab
    assert the_lab.leftovers() == []


@pytest.fixture(scope="module")
def kinds() -> list[str]:
    return kinds_available()


# -- pure parts: no root needed ----------------------------------------------------------------


def test_read_hello_finds_sni_and_reports_truncation() -> None:
    hello = client_hello("www.blocked.example")
    assert read_hello(hello).sni == "www.blocked.example"
    cut = read_hello(hello[:60])
    assert cut.sni is None and cut.reason.startswith("truncated")
    assert read_hello(b"GET / HTTP/1.1\r\n").sni is None
    assert name_listed("www.blocked.example", [BLOCKED])
    assert name_listed("BLOCKED.example.", [BLOCKED])
    assert not name_listed("notblocked.example", [BLOCKED])


def _censor_run(tmp_path: Path, packets: list[bytes]) -> tuple[list[bool], list[dict[str, object]]]:
    log = tmp_path / "censor.jsonl"
    with open(log, "w", encoding="utf-8") as fh:
        censor = FirstPacketCensor([BLOCKED], fh)
        verdicts = [censor.verdict(p) for p in packets]
    return verdicts, read_decisions(log)


@pytest.mark.parametrize("family", FAMILIES)
def test_firstpacket_censor_kills_listed_flow_both_ways(tmp_path: Path, family: int) -> None:
    c, s = (CLIENT_V4, SERVER_V4) if family == 4 else (CLIENT_V6, SERVER_V6)
    hello = client_hello(BLOCKED)
    packets = [
        build_tcp(family, c, s, 40000, 443, 100, 0, TCP_SYN),
        build_tcp(family, s, c, 443, 40000, 900, 101, TCP_SYN | TCP_ACK),
        build_tcp(family, c, s, 40000, 443, 101, 901, TCP_ACK, hello),
        build_tcp(family, s, c, 443, 40000, 901, 101, TCP_ACK, b"late"),
        build_tcp(family, c, s, 40000, 443, 101, 901, TCP_ACK, hello),  # retransmission
    ]
    verdicts, decisions = _censor_run(tmp_path, packets)
    assert verdicts == [True, True, False, False, False]
    assert [(d["sni"], d["verdict"]) for d in decisions] == [(BLOCKED, "kill")]


def test_firstpacket_censor_allows_flow_whose_first_packet_lacks_sni(tmp_path: Path) -> None:
    hello = client_hello(BLOCKED)
    packets = [
        build_tcp(4, CLIENT_V4, SERVER_V4, 40001, 443, 7, 0, TCP_SYN),
        build_tcp(4, CLIENT_V4, SERVER_V4, 40001, 443, 8, 1, TCP_ACK, hello[:40]),
        build_tcp(4, CLIENT_V4, SERVER_V4, 40001, 443, 48, 1, TCP_ACK, hello[40:]),
        # A flow whose SYN the censor never saw is not judged at all.
        build_tcp(4, CLIENT_V4, SERVER_V4, 40002, 443, 8, 1, TCP_ACK, hello),
    ]
    verdicts, decisions = _censor_run(tmp_path, packets)
    assert verdicts == [True, True, True, True]
    assert [(d["sni"], d["verdict"]) for d in decisions] == [(None, "allow")]
    assert str(decisions[0]["reason"]).startswith("truncated")


def _write_pcap(path: Path, packets: list[bytes], ng: bool = False) -> None:
    eth_head = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01"
    with open(path, "wb") as fh:
        writer = dpkt.pcapng.Writer(fh) if ng else dpkt.pcap.Writer(fh)
        for i, pkt in enumerate(packets):
            ethertype = b"\x08\x00" if pkt[0] >> 4 == 4 else b"\x86\xdd"
            writer.writepkt(eth_head + ethertype + pkt, ts=1000.0 + i / 1000)


@pytest.mark.parametrize(("family", "ng"), [(4, False), (6, True)])
def test_wirecheck_on_synthetic_split(tmp_path: Path, family: int, ng: bool) -> None:
    c, s = (CLIENT_V4, SERVER_V4) if family == 4 else (CLIENT_V6, SERVER_V6)
    hello = client_hello(ALLOWED)
    isn = 0xFFFFFFF0  # sequence numbers wrap inside the record
    pkts = [
        build_tcp(family, c, s, 40000, 443, isn, 0, TCP_SYN),
        build_tcp(family, s, c, 443, 40000, 5, isn + 1, TCP_SYN | TCP_ACK),
        # second part first: reordered on purpose
        build_tcp(family, c, s, 40000, 443, (isn + 1 + 100) & 0xFFFFFFFF, 6, TCP_ACK, hello[100:]),
        build_tcp(family, c, s, 40000, 443, isn + 1, 6, TCP_ACK, hello[:100]),
    ]
    path = tmp_path / ("split.pcapng" if ng else "split.pcap")
    _write_pcap(path, pkts, ng)
    [flow] = analyze(path)
    assert flow.sizes == [len(hello) - 100, 100]
    assert flow.first_record == hello and flow.sni == ALLOWED and flow.is_client_hello
    assert not flow.seq_continuous and flow.checksums_ok

    # A corrupted TCP checksum is reported, and so is an offload-style partial one.
    bad = bytearray(pkts[3])
    ihl = 20 if family == 4 else 40
    bad[ihl + 16] ^= 0xFF
    _write_pcap(path, [pkts[0], bytes(bad)], ng)
    [flow] = analyze(path)
    assert flow.sizes == [100] and not flow.complete and flow.seq_continuous
    assert not flow.checksums_ok and "tcp=bad" in flow.bad_checksums[0]


# -- namespaces ------------------------------------------------------------------------------


@pytest.mark.netns
def test_topology_is_built_and_torn_down_completely() -> None:
    require_root()
    lab = Lab()
    with pytest.raises(RuntimeError, match="boom"), lab:
        assert {lab.ns(r) for r in ("client", "censor", "server")} <= set(netns_list())
        pid = lab.spawn("client", ["sleep", "300"])
        assert pid in lab.alive()
        lab.exec("client", ["ip", "route", "get", SERVER_V4])
        with pytest.raises(LabError):
            lab.ns("gateway")  # no gateway outside router mode
        raise RuntimeError("boom")  # teardown must happen on failure too
    assert lab.problems == []
    assert lab.leftovers() == []
    assert not [ns for ns in netns_list() if ns.startswith(lab.prefix)]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not lab.workdir.exists()


@pytest.mark.netns
@pytest.mark.parametrize("censor", [None, "string", "firstpacket"])
def test_unlisted_name_passes_each_censor(lab: Lab, kinds: list[str], censor: str | None) -> None:
    names = [ALLOWED, BLOCKED] if censor is None else [ALLOWED]
    if censor:
        lab.start_censor(censor, names=[BLOCKED])
    try:
        jobs = [(k, n, f) for k in kinds for n in names for f in FAMILIES]
        results = run_matrix(lab, jobs)
        failed = {job: res for job, res in results.items() if not res[0]}
        assert not failed, f"through censor {censor}: {failed}"
        if censor == "firstpacket":
            seen = {(d["family"], d["sni"], d["verdict"]) for d in lab.censor_decisions()}
            assert {(4, ALLOWED, "allow"), (6, ALLOWED, "allow")} <= seen
    finally:
        lab.stop_censor()


@pytest.mark.netns
@pytest.mark.parametrize("censor", ["string", "firstpacket"])
def test_listed_name_is_blocked_by_each_censor(lab: Lab, kinds: list[str], censor: str) -> None:
    lab.start_censor(censor, names=[BLOCKED])
    try:
        jobs = [(k, BLOCKED, f) for k in kinds for f in FAMILIES]
        results = run_matrix(lab, jobs, timeout=BLOCKED_TIMEOUT)
        passed = {job: res for job, res in results.items() if res[0]}
        for job in [j for j in passed if j[0] == "chromium"]:
            if censor == "string":
                # Chromium permutes its extensions: once in a while the name straddles
                # the segment boundary and a per-packet match cannot see it. Try again.
                if not lab.client(*job, timeout=BLOCKED_TIMEOUT)[0]:
                    del passed[job]
            elif _first_packet_lacked_sni(lab.censor_decisions(), job[2]):
                # Chromium's ~2 KB hello spans two segments and the SNI lands in the
                # second about half the time: a first-packet DPI then lets it through.
                del passed[job]
        assert not passed, f"through censor {censor}: {passed}"
        if censor == "string":
            assert lab.censor_drops() > 0
        else:
            kills = {
                d["family"]
                for d in lab.censor_decisions()
                if d["sni"] == BLOCKED and d["verdict"] == "kill"
            }
            assert kills == set(FAMILIES)
    finally:
        lab.stop_censor()


def _first_packet_lacked_sni(decisions: list[dict[str, object]], family: int) -> bool:
    return any(
        d["family"] == family
        and d["sni"] is None
        and d["verdict"] == "allow"
        and str(d["reason"]).startswith("truncated")
        for d in decisions
    )


@pytest.mark.netns
def test_firstpacket_censor_with_rst_fails_fast(lab: Lab) -> None:
    lab.start_censor("firstpacket", names=[BLOCKED], rst=True)
    try:
        for family in FAMILIES:
            ok, detail = lab.client("curl", BLOCKED, family, timeout=BLOCKED_TIMEOUT)
            assert not ok and "reset" in detail.lower(), detail
            assert lab.client("curl", ALLOWED, family)[0]
    finally:
        lab.stop_censor()


@pytest.mark.netns
def test_close_connections_ends_a_censored_clients_orphaned_socket(lab: Lab) -> None:
    def towards_443() -> list[str]:
        out = lab.exec("client", ["ss", "-H", "-t", "-a", "dport", "=", ":443"]).stdout
        return [line for line in out.splitlines() if line.strip()]

    lab.start_censor("firstpacket", names=[BLOCKED])
    try:
        assert not lab.client("curl", BLOCKED, 4, timeout=1.0)[0]
        # curl is gone; its socket still retransmits the dropped hello.
        assert towards_443(), "no orphaned socket to close"
        lab.close_connections("client")
        assert towards_443() == []
    finally:
        lab.stop_censor()


@pytest.mark.netns
def test_wirecheck_reports_one_unsplit_clienthello(lab: Lab, kinds: list[str]) -> None:
    with lab.capture("client") as client_cap, lab.capture("server") as server_cap:
        for family in FAMILIES:
            ok, detail = lab.client("python", ALLOWED, family)
            assert ok, detail
    # Only connections opened during the capture: killed flows of earlier tests may
    # still be retransmitting their hello.
    flows = [f for f in client_cap.flows() if f.syn_seen]
    assert [f.family for f in flows] == [4, 6]
    server_records = {(f.family, f.sport): f.first_record for f in server_cap.flows()}
    for flow in flows:
        assert flow.syn_seen and flow.complete and flow.is_client_hello, flow.summary()
        assert flow.sizes == [flow.record_len], flow.summary()  # one segment, not split
        assert flow.seq_continuous and flow.retransmissions == 0
        assert flow.checksums_ok, flow.bad_checksums
        assert flow.sni == ALLOWED
        assert flow.first_record is not None and flow.first_record[:2] == b"\x16\x03"
        assert server_records[(flow.family, flow.sport)] == flow.first_record

    if "chromium" not in kinds:
        return
    # Chromium's hello is larger than one MSS: two segments, reassembled byte for byte.
    with lab.capture("client") as client_cap, lab.capture("server") as server_cap:
        ok, detail = lab.client("chromium", ALLOWED, 4)
        assert ok, detail
    server_records = {f.sport: f.first_record for f in server_cap.flows()}
    big = [f for f in client_cap.flows() if f.syn_seen and f.complete and len(f.sizes) > 1]
    assert big, [f.summary() for f in client_cap.flows()]
    for flow in big:
        assert sum(flow.sizes) >= flow.record_len and flow.seq_continuous and flow.checksums_ok
        assert flow.sni == ALLOWED and server_records[flow.sport] == flow.first_record


@pytest.mark.netns
def test_router_mode_forwards_through_gateway(kinds: list[str]) -> None:
    require_root()
    with Lab(router=True) as lab:
        route = lab.exec("client", ["ip", "-4", "route", "get", SERVER_V4]).stdout
        assert f"via {lab.address('gateway', 4)}" in route
        lab.start_server(names=[BLOCKED, ALLOWED])
        lab.start_censor("firstpacket", names=[BLOCKED], rst=True)
        with lab.capture("gateway") as gw_cap:
            jobs = [(k, ALLOWED, f) for k in kinds for f in FAMILIES]
            jobs += [("curl", BLOCKED, f) for f in FAMILIES]
            results = run_matrix(lab, jobs, timeout=BLOCKED_TIMEOUT)
        for (kind, name, family), (ok, detail) in results.items():
            assert ok == (name == ALLOWED), f"{kind} {name} IPv{family}: {detail}"
        seen = {(f.family, f.sni) for f in gw_cap.flows()}
        assert {(4, ALLOWED), (6, ALLOWED), (4, BLOCKED), (6, BLOCKED)} <= seen
    assert lab.leftovers() == []
