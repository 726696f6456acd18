"""`govpass probe` against each lab censor, then its written config in `govpass run`.

For every censor a split can beat, the probe must find a strategy, write a config, and
that config must get curl through in `govpass run --config`; for the reassembling box
and the address block it must say unfixable with the right reason; it must never
choose a strategy that breaks the control server; and it must leave no rule behind.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    ALLOWED,
    BLOCKED,
    BLOCKED_TIMEOUT,
    PASS_TIMEOUT,
    all_splits,
    censoring,
    cli_argv,
    govpass_cli,
    govpass_rule_lines,
    mangle_rules,
    running,
)
from govpass.lab import Lab
from govpass.lab.netns import caps_argv
from govpass.probe.intercept import CHAIN_PREFIX
from govpass.strategy import Strategy

pytestmark = pytest.mark.netns

PICKY = [("splitreject", [ALLOWED])]  # the control's server resets first segments < 8


ONLY_TWO_CAPS = caps_argv(("net_admin", "net_raw"))


def probe(
    lab: Lab,
    *extra: str,
    hosts: Sequence[str] = (BLOCKED, ALLOWED),
    family: int = 4,
    prefix: Sequence[str] = (),
) -> dict[str, Any]:
    """Runs the probe in the client namespace; its exit code, records by host, config."""
    config = lab.workdir / f"probe-{time.monotonic_ns()}.toml"
    args = ["probe", *hosts, "--connect", lab.address("server", family), "--json"]
    args += ["--tries", "2", "--timeout", "2", "--write-config", str(config), *extra]
    proc = lab.exec("client", [*prefix, *cli_argv(None, args)], check=False, timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr
    records = {r["host"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert set(records) == set(hosts), (proc.stdout, proc.stderr)
    left = [ln for ln in govpass_rule_lines(lab, "client") if CHAIN_PREFIX in ln]
    assert left == [], f"the probe left rules behind: {left}"
    return {"rc": proc.returncode, "hosts": records, "config": config, "stderr": proc.stderr}


def strategy_of(record: dict[str, Any]) -> Strategy:
    argv = record["strategy"].split()
    flags = dict(zip(argv[::2], argv[1::2], strict=True))
    return Strategy.parse(flags["--split-chunk"], flags.get("--split-pos", ""))


def assert_config_works(lab: Lab, config: Path) -> None:
    """curl to both names, and Chromium (a post-quantum hello over two segments,
    extensions shuffled) to the blocked one, when it is installed."""
    assert stat.S_IMODE(config.stat().st_mode) == 0o644
    jobs = [("curl", BLOCKED), ("curl", ALLOWED)]
    if "chromium" in lab.clients_available():
        jobs.append(("chromium", BLOCKED))
    with running(lab, ["--config", str(config)], name="probe-config"):
        for kind, name in jobs:
            ok, detail = lab.client(kind, name, 4, timeout=PASS_TIMEOUT)
            assert ok, f"{kind} {name} with the probe's config: {detail}"


@pytest.mark.parametrize(
    ("censor", "also", "check"),
    [
        # a per-packet string match: only a cut inside the name gets by
        ("string", (), lambda s: any(p.startswith(("midsld", "sniend")) for p in s.positions)),
        # a first-packet DPI: the cheapest split does
        ("firstpacket", (), lambda s: s == Strategy(1)),
        # TSPU-like: a first segment of 1 or 2 bytes
        ("tspu", (), lambda s: 1 <= s.chunk <= 2),
        # first-packet DPI, but the control's server resets first segments under 8 bytes
        ("firstpacket", PICKY, lambda s: s.chunk >= 8 or (s.chunk == 0 and s.positions)),
    ],
    ids=["string", "firstpacket", "tspu", "firstpacket+picky-control"],
)
def test_probe_fixes_and_its_config_works(
    host_lab: Lab, censor: str, also: Any, check: Any
) -> None:
    with censoring(host_lab, censor, also=also):
        ok, _ = host_lab.client("curl", BLOCKED, 4, timeout=BLOCKED_TIMEOUT)
        assert not ok, f"the {censor} censor let curl through without govpass"
        out = probe(host_lab)
        blocked, allowed = out["hosts"][BLOCKED], out["hosts"][ALLOWED]
        assert out["rc"] == 0, out
        assert allowed["verdict"] == "ok" and allowed["strategy"] == ""
        assert blocked["verdict"] == "fixed", blocked
        chosen = strategy_of(blocked)
        assert check(chosen), blocked
        # What it chose worked on every try; what it passed over is in `tried`.
        assert blocked["tried"][-1]["result"] == "works"
        assert blocked["tried"][-1]["strategy"] == blocked["strategy"]
        if also:
            broke = [t["label"] for t in blocked["tried"] if t["result"] == "breaks-control"]
            assert broke and all(Strategy.from_text(b).chunk < 8 for b in broke), blocked
        assert_config_works(host_lab, out["config"])


@pytest.mark.parametrize(
    ("censor", "names", "reason"),
    [
        ("reassemble", (BLOCKED,), "every split-only strategy failed: the censor reassembles"),
        ("address", (), "address blocked"),
    ],
)
def test_probe_says_unfixable(
    host_lab: Lab, censor: str, names: tuple[str, ...], reason: str
) -> None:
    with censoring(host_lab, censor, names):
        out = probe(host_lab, hosts=(BLOCKED,))
    rec = out["hosts"][BLOCKED]
    assert out["rc"] == 1
    assert rec["verdict"] == "unfixable" and rec["strategy"] == ""
    assert rec["reason"] == reason, rec
    if censor == "address":
        assert rec["tried"] == []  # no split can help: the ladder is not run
    else:
        assert all(t["result"] == "fails" for t in rec["tried"]) and len(rec["tried"]) > 5
    text = out["config"].read_text()
    assert "hosts" not in text  # nothing fixed: only the catch-all profile


def test_probe_is_not_touched_by_a_running_daemon(host_lab: Lab) -> None:
    """A daemon whose split beats the censor runs beside the probe: the probe's
    unsplit attempts must still see the block, and its own engine still works."""
    with (
        censoring(host_lab, "tspu"),
        running(host_lab, ["--split-chunk", "1"], name="beside-probe") as gp,
    ):
        ok, detail = host_lab.client("curl", BLOCKED, 4, timeout=PASS_TIMEOUT)
        assert ok, f"the daemon itself should get curl through: {detail}"
        # The workers write their counters every 0.25 s: wait for curl's split.
        before = all_splits(gp.wait_stats(lambda s: all_splits(s) >= 1))
        assert before >= 1, "curl's split was never counted"
        out = probe(host_lab, hosts=(BLOCKED,))
        rec = out["hosts"][BLOCKED]
        assert rec["verdict"] == "fixed", rec
        unsplit = [s["result"] for s in rec["steps"] if s["step"] == "unsplit"]
        assert unsplit and unsplit[0].startswith("blocked by name"), rec
        assert all_splits(gp.stats()) == before, "the daemon split probe connections"


def test_probe_refuses_bad_input_in_one_line(host_lab: Lab) -> None:
    proc = govpass_cli(host_lab, "client", ["probe", "bad\x07name", "--json"])
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "invalid host" in proc.stderr
    assert "\x07" not in proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_rules_go_when_the_probe_is_stopped(host_lab: Lab, sig: signal.Signals) -> None:
    def probe_rules() -> list[str]:
        return [ln for ln in mangle_rules(host_lab, "client") if CHAIN_PREFIX in ln]

    with censoring(host_lab, "reassemble"):  # a long ladder: time to stop it midway
        args = ["probe", BLOCKED, "--connect", host_lab.address("server", 4), "--json"]
        pid = host_lab.spawn("client", ["-m", "govpass", *args], python=True)
        deadline = time.monotonic() + 30
        while not probe_rules():
            assert time.monotonic() < deadline, host_lab.log_of(pid).read_text()
            time.sleep(0.1)
        popen = host_lab.procs.procs[pid].popen
        os.kill(pid, sig)
        rc = popen.wait(timeout=20)
        log = host_lab.log_of(pid).read_text(errors="replace")
        host_lab.kill(pid)
    assert rc == 130, log
    assert "Traceback" not in log and "rules removed" in log, log
    assert probe_rules() == []


def test_probe_over_ipv6_with_only_the_two_capabilities(host_lab: Lab) -> None:
    """What the systemd unit grants run (CAP_NET_ADMIN, CAP_NET_RAW) is enough, and
    the probe's rules and engine work for IPv6 as for IPv4."""
    with censoring(host_lab, "tspu"):
        out = probe(host_lab, family=6, prefix=ONLY_TWO_CAPS)
    rec = out["hosts"][BLOCKED]
    assert out["rc"] == 0 and rec["verdict"] == "fixed", (rec, out["stderr"])
    assert rec["address"] == host_lab.address("server", 6)
    assert 1 <= strategy_of(rec).chunk <= 2


def test_resolver_answer_that_differs_from_connect_is_flagged(host_lab: Lab) -> None:
    host_lab.set_hosts("client", {BLOCKED: "203.0.113.99"})
    try:
        out = probe(host_lab, hosts=(BLOCKED,))
    finally:
        host_lab.set_hosts("client", {})
    rec = out["hosts"][BLOCKED]
    resolve = next(s["result"] for s in rec["steps"] if s["step"] == "resolve")
    assert f"using {host_lab.address('server', 4)}" in resolve
    assert "resolver: 203.0.113.99" in resolve
    assert "not --connect" in resolve and "private/bogon" in resolve
