#!/usr/bin/env python3
"""Targeting list benchmarks: 100 k host names and 100 k IP prefixes.

    python ci/bench_lists.py [--quick] [--cpu N] [--write BENCHMARKS.md] [--check]

Pinned to one core, in one run:

1. loading: a 100 k-line host list file and a 100 k-line IP set file (mixed
   IPv4/IPv6 addresses and prefixes), plain and gzip, read and parsed the way
   the daemon does it (``Targeting.build``: read, decompress, parse, build);
2. matching through ``in`` (``HostList`` / ``IpSet``): hits (subdomains of
   listed names, addresses inside listed prefixes) and misses;
3. matching through the engine: new flows each carrying a whole ClientHello,
   once with the default catch-all split profile and once with the 100 k host
   list profile (the name is on it) and the 100 k prefix profile (the address
   is in it): splits/s and the ratio to the catch-all; also the rate of flows
   passed because their name is not listed;
4. memory: RSS growth of the parsed sets.

``--write`` replaces the ``## Lists`` section of the Markdown file (re-read
right before writing; other sections are left alone); ``--check`` exits 1 when
a target below is missed.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import machine, rss_bytes, write_section

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
HELLO = (ROOT / "tests/fixtures/hellos/openssl_default.bin").read_bytes()  # blocked.example
UNLISTED = (ROOT / "tests/fixtures/hellos/openssl_single_label.bin").read_bytes()  # intranet
DST = "203.0.113.9"
TARGETS = {
    "load_hosts_s": 0.25,  # at most, 100 k names (plain file)
    "load_ips_s": 0.25,  # at most, 100 k prefixes (plain file)
    "host_lookups": 2_000_000,  # at least, per second through `in`
    "ip_lookups": 2_000_000,
    "split_ratio": 0.8,  # at least: list-profile splits/s over catch-all splits/s
}

# ---------------------------------------------------------------- data


def make_hosts(n: int, rng: random.Random) -> list[str]:
    tlds = ["com", "net", "org", "ru", "example", "co.uk", "io", "de"]
    out = ["# generated: 100 k names", "blocked.example"]
    for i in range(n - 1):
        label = f"{rng.getrandbits(40):010x}-{i}"
        host = f"{label}.{tlds[i % len(tlds)]}"
        if i % 3 == 0:
            host = f"cdn{i % 7}.{host}"
        out.append(("^" if i % 10 == 0 else "") + host)
    return out


def make_prefixes(n: int, rng: random.Random) -> list[str]:
    out = ["# generated: 100 k prefixes", "203.0.113.0/24"]
    for i in range(n - 1):
        if i % 5 < 3:  # 60 % IPv4
            addr = rng.getrandbits(32) & ~0xFF
            plen = (32, 24, 22, 16)[i % 4]
            mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
            a = addr & mask
            out.append(f"{a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}/{plen}")
        else:
            plen = (128, 64, 48, 32)[i % 4]
            a = (0x2A00 << 112 | rng.getrandbits(112)) & ~((1 << (128 - plen)) - 1)
            words = [(a >> (112 - 16 * k)) & 0xFFFF for k in range(8)]
            out.append(":".join(f"{w:x}" for w in words) + f"/{plen}")
    return out


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def make_packets(n: int, payload: bytes, dst: str = DST) -> list[bytes]:
    """``n`` IPv4/TCP packets of ``n`` different flows, valid checksums."""
    dst_b = bytes(int(x) for x in dst.split("."))
    total = 40 + len(payload)
    out = []
    for i in range(n):
        src = bytes([10, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF])
        sport = 10_000 + i % 50_000
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 6, 0, src, dst_b)
        ip = ip[:10] + struct.pack("!H", 0xFFFF - _fold(_sum16(ip))) + ip[12:]
        tcp = struct.pack("!HHIIBBHHH", sport, 443, 1000, 1, 5 << 4, 0x18, 502, 0, 0) + payload
        ck = 0xFFFF - _fold(_sum16(src + dst_b) + 6 + len(tcp) + _sum16(tcp))
        out.append(ip + tcp[:16] + struct.pack("!H", ck) + tcp[18:])
    return out


# ---------------------------------------------------------------- measuring


def best(rounds: int, fn) -> float:
    """Shortest of `rounds` timings of fn()."""
    times = []
    for _ in range(rounds):
        gc.collect()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def load_time(flags: dict[str, str], rounds: int) -> tuple[float, str]:
    from govpass.config import load
    from govpass.targeting import Targeting

    config = load(env={}, flags=flags)
    summary = ""

    def once() -> None:
        nonlocal summary
        t = Targeting.from_config(config)
        t.build()
        summary = t.summary

    return best(rounds, once), summary


def lookup_rate(container, keys: list[str], rounds: int) -> tuple[float, int]:
    hits = 0

    def once() -> None:
        nonlocal hits
        hits = 0
        for k in keys:
            if k in container:
                hits += 1

    return len(keys) / best(rounds, once), hits


def split_once(profiles, pkts: list[bytes]) -> tuple[float, dict]:
    """Seconds for one fresh engine to take every packet (each a new flow), and its stats."""
    from govpass._core import Engine, EngineConfig

    eng = Engine(EngineConfig(max_flows=len(pkts) + 1))
    if profiles is not None:
        eng.set_profiles(profiles)
    proc = eng.process
    gc.collect()
    gc.disable()
    try:
        t = time.perf_counter()
        for p in pkts:
            acts = proc(p, 1.0, None)
            if acts:
                for a in acts:
                    a.packet  # noqa: B018 - touched, as a backend would
        secs = time.perf_counter() - t
    finally:
        gc.enable()
    return secs, eng.stats()


def split_rates(cases: dict, rounds: int) -> dict[str, tuple[float, dict]]:
    """Best rate per case; the cases take turns in every round, so a machine that
    gets slower or faster during the run does not favour one of them."""
    out: dict[str, tuple[float, dict]] = {}
    for _ in range(rounds):
        for name, (profiles, pkts) in cases.items():
            secs, stats = split_once(profiles, pkts)
            rate = len(pkts) / secs
            if name not in out or rate > out[name][0]:
                out[name] = (rate, stats)
    return out


def memory_probe(kind: str, n: int) -> int:
    """In a fresh process: RSS growth of parsing `n` entries (the lines stay alive)."""
    from govpass._core import HostList, IpSet

    rng = random.Random(20261122)
    lines = make_hosts(n, rng) if kind == "hosts" else make_prefixes(n, rng)
    gc.collect()
    before = rss_bytes()
    parsed = (HostList if kind == "hosts" else IpSet)(lines)
    growth = rss_bytes() - before
    assert len(parsed) > 0
    return growth


def run_probe(kind: str, n: int) -> int:
    cmd = [sys.executable, __file__, "--probe", kind, "--entries", str(n)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def run(quick: bool) -> dict:
    from govpass._core import HostList, IpSet, Profile

    n = 20_000 if quick else 100_000
    rounds = 2 if quick else 5
    flows = 20_000 if quick else 100_000
    rng = random.Random(20261122)
    hosts = make_hosts(n, rng)
    prefixes = make_prefixes(n, rng)
    r: dict = {"entries": n}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "hosts.txt").write_text("\n".join(hosts) + "\n")
        (d / "hosts.gz").write_bytes(gzip.compress(("\n".join(hosts) + "\n").encode()))
        (d / "ips.txt").write_text("\n".join(prefixes) + "\n")
        (d / "ips.gz").write_bytes(gzip.compress(("\n".join(prefixes) + "\n").encode()))
        r["file_bytes"] = {p.name: p.stat().st_size for p in d.iterdir()}
        print("loading ...", file=sys.stderr)
        r["load_hosts_s"], r["hosts_summary"] = load_time(
            {"hostlist": str(d / "hosts.txt")}, rounds
        )
        r["load_hosts_gz_s"], _ = load_time({"hostlist": str(d / "hosts.gz")}, rounds)
        r["load_ips_s"], r["ips_summary"] = load_time({"ipset": str(d / "ips.txt")}, rounds)
        r["load_ips_gz_s"], _ = load_time({"ipset": str(d / "ips.gz")}, rounds)

    print("memory ...", file=sys.stderr)
    r["hosts_rss"] = run_probe("hosts", n)
    r["ips_rss"] = run_probe("ips", n)
    host_list = HostList(hosts)
    ip_set = IpSet(prefixes)
    r["ip_ranges"] = len(ip_set)

    print("lookups ...", file=sys.stderr)
    names = [h.lstrip("^") for h in hosts[1:]]
    keys = []
    for i in range(200_000 if not quick else 50_000):
        base = names[rng.randrange(len(names))]
        keys.append(f"www.{base}" if i % 2 else f"miss{i}.{base.split('.')[-1]}")
    r["host_lookups"], r["host_hits"] = lookup_rate(host_list, keys, rounds)
    r["host_lookup_keys"] = len(keys)
    addrs = []
    for i in range(len(keys)):
        if i % 2:
            addrs.append(prefixes[1 + rng.randrange(len(prefixes) - 1)].split("/")[0])
        elif i % 4 == 0:
            addrs.append(f"198.18.{i >> 8 & 255}.{i & 255}")
        else:
            addrs.append(f"2001:db8::{i >> 16:x}:{i & 0xFFFF:x}")
    r["ip_lookups"], r["ip_hits"] = lookup_rate(ip_set, addrs, rounds)

    print("engine ...", file=sys.stderr)
    listed = [Profile("listed", hosts=[host_list]), Profile("other", action="pass")]
    by_ip = [Profile("listed", ips=[ip_set]), Profile("other", action="pass")]
    pkts = make_packets(flows, HELLO)
    unlisted = make_packets(flows, UNLISTED)
    rates = split_rates(
        {
            "catch_all_splits": (None, pkts),
            "hostlist_splits": (listed, pkts),
            "ipset_splits": (by_ip, pkts),
            "hostlist_unlisted_pass": (listed, unlisted),
        },
        rounds * 2,
    )
    r.update({name: rate for name, (rate, _) in rates.items()})
    s0, s1, s2, s3 = (stats for _, stats in rates.values())
    assert s0["splits"] == s1["splits"] == s2["splits"] == flows, (s0, s1, s2)
    assert s3["splits"] == 0 and s3["profile_pass"] == flows, s3
    r["flows"] = flows
    r["hostlist_ratio"] = r["hostlist_splits"] / r["catch_all_splits"]
    r["ipset_ratio"] = r["ipset_splits"] / r["catch_all_splits"]
    r["targets_met"] = {
        "load_hosts_s": r["load_hosts_s"] <= TARGETS["load_hosts_s"],
        "load_ips_s": r["load_ips_s"] <= TARGETS["load_ips_s"],
        "host_lookups": r["host_lookups"] >= TARGETS["host_lookups"],
        "ip_lookups": r["ip_lookups"] >= TARGETS["ip_lookups"],
        "split_ratio": min(r["hostlist_ratio"], r["ipset_ratio"]) >= TARGETS["split_ratio"],
    }
    return r


# ---------------------------------------------------------------- report


def rate(x: float) -> str:
    return f"{x / 1e6:.2f} M/s" if x >= 1e6 else f"{x / 1e3:.0f} k/s"


def ms(x: float) -> str:
    return f"{x * 1000:.0f} ms"


def mib(x: int) -> str:
    return f"{x / 2**20:.1f} MiB"


def met(key: str, r: dict) -> str:
    return "met" if r["targets_met"][key] else "MISSED"


def markdown(r: dict) -> str:
    m = r["machine"]
    n = f"{r['entries'] // 1000} k"
    fb = r["file_bytes"]
    return "\n".join(
        [
            "## Lists",
            "",
            f"Targeting with {n} host names and {n} IP prefixes: loading the files, "
            "matching through `in`, and splitting through the engine with a list profile "
            "compared with the default catch-all profile, on one core.",
            "",
            "Command (`--write` rewrites this section):",
            "",
            "```",
            r["command"],
            "```",
            "",
            f"Machine: {m['cpu']}, {m['cpus']} CPUs (pinned to CPU {r['cpu']}), kernel "
            f"{m['kernel']}, Python {m['python']}. Date: {r['date']}.",
            "",
            f"Data: {n} names (a third with a `cdn` subdomain, a tenth `^exact`, 8 TLDs; "
            f"{fb['hosts.txt'] / 1e6:.1f} MB, gzip {fb['hosts.gz'] / 1e6:.1f} MB) and {n} "
            "prefixes (60 % IPv4 /32 /24 /22 /16, 40 % IPv6 /128 /64 /48 /32; "
            f"{fb['ips.txt'] / 1e6:.1f} MB, gzip {fb['ips.gz'] / 1e6:.1f} MB, "
            f"{r['ip_ranges']:,} merged ranges).",
            "",
            "| measure | result | target |",
            "|---|---:|---|",
            f"| load {n} names (read, parse, build: `Targeting.build`) | "
            f"{ms(r['load_hosts_s'])} | <= {ms(TARGETS['load_hosts_s'])}: "
            f"{met('load_hosts_s', r)} |",
            f"| the same from a gzip file | {ms(r['load_hosts_gz_s'])} | |",
            f"| load {n} prefixes | {ms(r['load_ips_s'])} | <= {ms(TARGETS['load_ips_s'])}: "
            f"{met('load_ips_s', r)} |",
            f"| the same from a gzip file | {ms(r['load_ips_gz_s'])} | |",
            f"| host lookups through `in` ({r['host_hits'] / r['host_lookup_keys']:.0%} hits, "
            "on subdomains; the rest misses) | "
            f"{rate(r['host_lookups'])} | >= {rate(TARGETS['host_lookups'])}: "
            f"{met('host_lookups', r)} |",
            f"| address lookups through `in` ({r['ip_hits'] / r['host_lookup_keys']:.0%} hits; "
            "IPv4 and IPv6) | "
            f"{rate(r['ip_lookups'])} | >= {rate(TARGETS['ip_lookups'])}: "
            f"{met('ip_lookups', r)} |",
            f"| memory of the parsed names (RSS growth) | {mib(r['hosts_rss'])} | |",
            f"| memory of the parsed prefixes (RSS growth) | {mib(r['ips_rss'])} | |",
            "",
            f"Engine, {r['flows'] // 1000} k new flows each carrying a whole 517-byte "
            "ClientHello (`Engine.process` from Python, actions touched):",
            "",
            "| profiles | splits/s | vs catch-all |",
            "|---|---:|---:|",
            f"| default catch-all split | {rate(r['catch_all_splits'])} | 1.00 |",
            f"| [{n} host list: split, other: pass], name listed | "
            f"{rate(r['hostlist_splits'])} | {r['hostlist_ratio']:.2f} |",
            f"| [{n} prefix set: split, other: pass], address listed | "
            f"{rate(r['ipset_splits'])} | {r['ipset_ratio']:.2f} |",
            f"| [{n} host list: split, other: pass], name not listed (passed) | "
            f"{rate(r['hostlist_unlisted_pass'])} (flows passed) | |",
            "",
            f"Target: a list profile keeps >= {TARGETS['split_ratio']:.0%} of the catch-all "
            f"rate: {met('split_ratio', r)}.",
            "",
        ]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 k entries, fewer rounds")
    ap.add_argument("--cpu", type=int, default=None, help="core to pin to (default: the last)")
    ap.add_argument("--write", type=Path, help="Markdown file whose '## Lists' section to write")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    ap.add_argument("--entries", type=int, default=100_000, help=argparse.SUPPRESS)
    args = ap.parse_args()
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    if args.probe:
        print(memory_probe(args.probe, args.entries))
        return 0
    result = run(args.quick)
    result.update(
        machine=machine(),
        cpu=cpu,
        date=time.strftime("%Y-%m-%d"),
        command="python ci/bench_lists.py" + (" --quick" if args.quick else ""),
    )
    section = markdown(result)
    print(section)
    if args.write:
        write_section(args.write, "Lists", section)
    if args.check and not all(result["targets_met"].values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
