"""`govpass run --strategy auto` against the lab's censors: it learns a strategy per
host name from the engine's verdicts, keeps it, gives up on what no split fixes, and
leaves unblocked hosts working from the first connection."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    ALLOWED,
    BLOCKED,
    BLOCKED_TIMEOUT,
    NAMES,
    PASS_TIMEOUT,
    censoring,
    govpass_cli,
    govpass_rule_lines,
    running,
)
from govpass.lab import Lab
from govpass.strategy import Strategy

pytestmark = pytest.mark.netns


def auto_args(state: Path, ladder: str = "1;2") -> list[str]:
    return ["--strategy", "auto", "--strategy-state", str(state), "--strategy-ladder", ladder]


def state_of(state: Path) -> dict[str, Any]:
    hosts: dict[str, Any] = json.loads(state.read_text())["hosts"]
    return hosts


def curl_until_ok(
    lab: Lab, name: str, attempts: int, family: int = 4, kind: str = "curl"
) -> list[bool]:
    """Connect to `name` until one gets through (at most `attempts`); the results in order."""
    results: list[bool] = []
    # Chromium needs longer than curl to start, even when nothing blocks it.
    timeout = BLOCKED_TIMEOUT if kind != "chromium" else PASS_TIMEOUT
    for _ in range(attempts):
        ok, _detail = lab.client(kind, name, family, timeout=timeout)
        results.append(ok)
        if ok:
            break
        time.sleep(0.5)  # the verdict travels worker -> parent -> state file -> worker
    return results


def wait_for(pred: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.1)


def fresh_state(lab: Lab, tag: str) -> Path:
    return lab.workdir / f"strategies-{tag}-{time.monotonic_ns()}.json"


def test_converges_against_tspu_then_every_connection_passes(host_lab: Lab) -> None:
    """Only a first segment of 1 or 2 bytes passes: 5 (the default) fails, no split
    fails, 1 works; from then on every connection gets through, and the state says 1."""
    state = fresh_state(host_lab, "tspu")
    with censoring(host_lab, "tspu"), running(host_lab, auto_args(state), name="auto") as gp:
        results = curl_until_ok(host_lab, BLOCKED, 6)
        assert results[-1], f"no convergence in {len(results)} connections: {gp.log()[-3000:]}"
        assert len(results) <= 4, results
        for i in range(5):
            ok, detail = host_lab.client("curl", BLOCKED, 4, timeout=PASS_TIMEOUT)
            assert ok, f"connection {i} after convergence: {detail}"
        assert state_of(state)[BLOCKED]["strategy"] in ("1", "2")
        stats = gp.wait_stats(lambda s: s.get("strategy_counts"))
        assert stats["strategy_counts"] in ({"1": 1}, {"2": 1}), stats
        assert "kernel split: off (strategy auto" in gp.log()
    # A restart starts where the last run ended: the first connection passes.
    with censoring(host_lab, "tspu"), running(host_lab, auto_args(state), name="again") as gp:
        assert "1 host(s) from" in gp.log(), gp.log()
        ok, detail = host_lab.client("curl", BLOCKED, 4, timeout=PASS_TIMEOUT)
        assert ok, f"after a restart: {detail}"


def test_unblocked_host_works_from_the_first_try_and_is_not_moved(host_lab: Lab) -> None:
    state = fresh_state(host_lab, "allowed")
    with censoring(host_lab, "tspu"), running(host_lab, auto_args(state), name="allowed") as gp:
        for i in range(3):
            ok, detail = host_lab.client("curl", ALLOWED, 4, timeout=PASS_TIMEOUT)
            assert ok, f"connection {i} to the unblocked host: {detail}"
        stats = gp.wait_stats(lambda s: s.get("auto_successes", 0) >= 3)
        assert stats.get("auto_successes", 0) >= 3, stats
        assert stats.get("strategy_changes", 0) == 0, stats
    assert ALLOWED not in state_of(state)


def test_reassembling_censor_makes_the_host_unfixable_without_thrashing(host_lab: Lab) -> None:
    state = fresh_state(host_lab, "reassemble")
    with (
        censoring(host_lab, "reassemble"),
        running(host_lab, auto_args(state), name="reassemble") as gp,
    ):
        steps = 4  # 5 (the default), none, 1, 2
        for _ in range(steps + 2):
            ok, _ = host_lab.client("curl", BLOCKED, 4, timeout=BLOCKED_TIMEOUT)
            assert not ok
            time.sleep(0.5)
        wait_for(lambda: "unfixable_until" in state_of(state).get(BLOCKED, {}))
        assert "unfixable_until" in state_of(state)[BLOCKED], gp.log()[-3000:]
        changes = gp.wait_stats(lambda s: s.get("strategy_unfixable") == 1)["strategy_changes"]
        assert changes == steps, gp.log()[-3000:]
        for _ in range(3):
            host_lab.client("curl", BLOCKED, 4, timeout=BLOCKED_TIMEOUT)
        assert gp.stats()["strategy_changes"] == changes  # no thrashing
        assert gp.log().count("fails with every strategy") == 1
        shown = govpass_cli(
            host_lab, "client", ["strategy", "show", "--strategy-state", str(state)], None
        )
        assert f"{BLOCKED} unfixable" in shown.stdout, shown
        # Cleared while it runs: the daemon forgets and learns afresh.
        cleared = govpass_cli(
            host_lab, "client", ["strategy", "clear", "--strategy-state", str(state)], None
        )
        assert cleared.returncode == 0, cleared.stderr
        wait_for(lambda: state.exists() and BLOCKED not in state_of(state))
        assert BLOCKED not in state_of(state)


def test_a_foreign_state_file_is_ignored_with_one_line(host_lab: Lab) -> None:
    state = fresh_state(host_lab, "foreign")
    state.write_text('{"something": "else"}')
    args: Sequence[str] = auto_args(state)
    with running(host_lab, args, name="foreign") as gp:
        assert gp.log().count("ignoring state file") == 1, gp.log()
        ok, detail = host_lab.client("curl", ALLOWED, 4, timeout=PASS_TIMEOUT)
        assert ok, detail


def test_re_adapts_when_the_censor_changes_under_it(host_lab: Lab) -> None:
    """tspu first (a 1-byte first segment wins), then a server that resets hellos
    whose first segment is under 8 bytes: the host moves on to 8."""
    state = fresh_state(host_lab, "change")
    args = auto_args(state, ladder="1;2;8")
    with running(host_lab, args, name="change") as gp:
        with censoring(host_lab, "tspu"):
            assert curl_until_ok(host_lab, BLOCKED, 6)[-1], gp.log()[-3000:]
            assert state_of(state)[BLOCKED]["strategy"] == "1"
        with censoring(host_lab, "splitreject"):
            results = curl_until_ok(host_lab, BLOCKED, 6)
            assert results[-1], f"no re-adaptation: {results}: {gp.log()[-3000:]}"
            assert state_of(state)[BLOCKED]["strategy"] == "8"
            ok, detail = host_lab.client("curl", BLOCKED, 4, timeout=PASS_TIMEOUT)
            assert ok, detail


def assert_converges_on_tspu(
    lab: Lab, gp: Any, state: Path, family: int = 4, kind: str = "curl", tries: int = 6
) -> None:
    """Against tspu: a few failing connections at most, then a 1- or 2-byte first
    segment in the state file, and every later connection passes."""
    results = curl_until_ok(lab, BLOCKED, tries, family, kind)
    assert results[-1], f"no convergence in {len(results)} connections: {gp.log()[-3000:]}"
    assert state_of(state)[BLOCKED]["strategy"] in ("1", "2"), state_of(state)
    for i in range(3):
        ok, detail = lab.client(kind, BLOCKED, family, timeout=PASS_TIMEOUT)
        assert ok, f"{kind} IPv{family} connection {i} after convergence: {detail}"


def test_converges_over_ipv6(host_lab: Lab) -> None:
    state = fresh_state(host_lab, "v6")
    with censoring(host_lab, "tspu"), running(host_lab, auto_args(state), name="auto6") as gp:
        assert_converges_on_tspu(host_lab, gp, state, family=6)
        ok, detail = host_lab.client("curl", ALLOWED, 6, timeout=PASS_TIMEOUT)
        assert ok, detail
    assert ALLOWED not in state_of(state)


def test_converges_in_router_mode(router_lab: Lab) -> None:
    """The daemon on the gateway learns from the client's forwarded flows, both
    families; the client runs nothing of govpass."""
    lab = router_lab
    state = fresh_state(lab, "router")
    args = ["--mode", "router", "--iface", lab.iface("gateway"), *auto_args(state)]
    with censoring(lab, "tspu"), running(lab, args, role="gateway", name="auto-router") as gp:
        for family in (4, 6):
            assert_converges_on_tspu(lab, gp, state, family=family)
        stats = gp.wait_stats(lambda s: s.get("strategy_counts"))
        assert sum(stats["strategy_counts"].values()) == 1, stats  # one name, one strategy
    assert govpass_rule_lines(lab, "client") == []


@pytest.fixture(scope="module")
def chromium(host_lab: Lab) -> None:
    if "chromium" not in host_lab.clients_available():
        pytest.skip("chromium is not installed (ci/lab-deps.sh installs it)")


@pytest.mark.usefixtures("chromium")
def test_chromium_converges_against_tspu(host_lab: Lab) -> None:
    """Chromium's post-quantum hello spans two segments (the name in either): the
    engine collects both and the learner still ends on a 1- or 2-byte first segment."""
    state = fresh_state(host_lab, "chromium-tspu")
    with censoring(host_lab, "tspu"), running(host_lab, auto_args(state), name="chr-tspu") as gp:
        assert_converges_on_tspu(host_lab, gp, state, kind="chromium")
        stats = gp.wait_stats(lambda s: s.get("splits", 0) >= 3)
        assert stats["splits"] >= 3, stats


def learned_midsld(state: Path) -> bool:
    label = state_of(state).get(BLOCKED, {}).get("strategy") if state.exists() else None
    if label in (None, "none"):
        return False
    return any(p.startswith("midsld") for p in Strategy.from_text(label).positions)


@pytest.mark.parametrize("kind", ["curl", "chromium"])
def test_converges_against_the_string_censor(host_lab: Lab, kind: str) -> None:
    """A per-packet match on the name: only a cut inside the name beats it for sure, so
    the ladder's SNI-relative step is where the host ends up (Chromium: whichever of its
    two segments holds the name).

    Chromium shuffles its extensions: now and then the name straddles a segment
    boundary of the configured split, of no split (its own two packets) or of "1", and
    that connection passes without the name cut. Such a pass is a true success and
    keeps the step, so the test connects until the host has learned the SNI-relative
    step and a connection passed with it (curl's name never straddles one: at most 4
    failures, then the first pass)."""
    if kind == "chromium" and "chromium" not in host_lab.clients_available():
        pytest.skip("chromium is not installed (ci/lab-deps.sh installs it)")
    state = fresh_state(host_lab, f"{kind}-string")
    args = auto_args(state, ladder="1;2,midsld")
    attempts = 5 if kind == "curl" else 12
    timeout = BLOCKED_TIMEOUT if kind != "chromium" else PASS_TIMEOUT
    with censoring(host_lab, "string"), running(host_lab, args, name=f"{kind}-string") as gp:
        results: list[bool] = []
        for _ in range(attempts):
            ok, _detail = host_lab.client(kind, BLOCKED, 4, timeout=timeout)
            results.append(ok)
            if ok and learned_midsld(state):
                break
            time.sleep(0.5)  # the verdict travels worker -> parent -> state file -> worker
        where = f"{results}: {state.read_text() if state.exists() else '-'} {gp.log()[-3000:]}"
        assert results[-1] and learned_midsld(state), f"no convergence in {where}"
        assert "unfixable" not in state.read_text(), where
        for i in range(3):
            ok, detail = host_lab.client(kind, BLOCKED, 4, timeout=PASS_TIMEOUT)
            assert ok, f"{kind} connection {i} after convergence: {detail}"


def test_an_auto_profile_learns_for_its_list_and_a_fixed_profile_keeps_its_split(
    host_lab: Lab,
) -> None:
    """[[profile]] "listed" (strategy = "auto", a host list naming the blocked host)
    before a catch-all that always cuts 3 bytes: the listed name converges to 1 or 2
    against tspu, the unlisted one keeps its 3-byte cut on every connection and is
    never learned; stats and doctor name the profile."""
    state = fresh_state(host_lab, "profiles")
    hostlist = host_lab.workdir / f"auto-list-{time.monotonic_ns()}.txt"
    hostlist.write_text(f"# the names the auto profile learns for\n{BLOCKED}\n")
    conf = host_lab.workdir / f"auto-profiles-{time.monotonic_ns()}.toml"
    conf.write_text(
        f"strategy-state = {json.dumps(str(state))}\n"
        'strategy-ladder = ["1", "2"]\n'
        f'[[profile]]\nname = "listed"\nhostlist = {json.dumps(str(hostlist))}\n'
        'strategy = "auto"\n'
        '[[profile]]\nname = "rest"\nsplit-chunk = 3\n'
    )
    with censoring(host_lab, "tspu"), running(host_lab, ["--config", str(conf)], name="prof") as gp:
        results = curl_until_ok(host_lab, BLOCKED, 6)
        assert results[-1], f"no convergence in {len(results)} connections: {gp.log()[-3000:]}"
        assert len(results) <= 4, results
        learned = json.loads(state.read_text())
        assert learned["hosts"] == {} and list(learned["profiles"]) == ["listed"], learned
        chunk = int(learned["profiles"]["listed"][BLOCKED]["strategy"])
        assert chunk in (1, 2), learned
        with host_lab.capture("client") as ccap:
            for name in (BLOCKED, ALLOWED, BLOCKED, ALLOWED, ALLOWED):
                ok, detail = host_lab.client("curl", name, 4, timeout=PASS_TIMEOUT)
                assert ok, f"{name} after convergence: {detail}"
        flows = [f for f in ccap.flows() if f.syn_seen and f.complete]
        firsts = {name: [f.sizes[0] for f in flows if f.sni == name] for name in NAMES}
        assert firsts == {BLOCKED: [chunk] * 2, ALLOWED: [3] * 3}, [f.summary() for f in flows]
        stats = gp.wait_stats(lambda s: s.get("strategy_counts"))
        assert stats["strategy_counts"] == {f"listed:{chunk}": 1}, stats
        assert ALLOWED not in json.dumps(json.loads(state.read_text())), state.read_text()
        shown = govpass_cli(host_lab, "client", ["doctor", "--json", "--config", str(conf)])
        checks = {c["name"]: c for c in json.loads(shown.stdout)}
        line = checks["strategies profile listed"]
        assert line["status"] == "ok", line
        assert f"1 host(s) learned, readable state file {state}" in line["detail"], line
        assert f"{chunk}: {BLOCKED}" in line["detail"], line


def test_strategy_auto_with_a_host_list_learns_only_for_the_listed_names(host_lab: Lab) -> None:
    """`--strategy auto --hostlist FILE`: the listed name converges and is kept under the
    state file's top-level hosts (as without a list); an unlisted name passes unsplit."""
    state = fresh_state(host_lab, "hostlist")
    hostlist = host_lab.workdir / f"auto-cli-list-{time.monotonic_ns()}.txt"
    hostlist.write_text(f"{BLOCKED}\n")
    args = [*auto_args(state), "--hostlist", str(hostlist)]
    with censoring(host_lab, "tspu"), running(host_lab, args, name="cli-list") as gp:
        results = curl_until_ok(host_lab, BLOCKED, 6)
        assert results[-1], f"no convergence in {len(results)} connections: {gp.log()[-3000:]}"
        assert state_of(state)[BLOCKED]["strategy"] in ("1", "2")
        with host_lab.capture("client") as ccap:
            for _ in range(2):
                ok, detail = host_lab.client("curl", ALLOWED, 4, timeout=PASS_TIMEOUT)
                assert ok, detail
        flows = [f for f in ccap.flows() if f.syn_seen and f.complete and f.sni == ALLOWED]
        assert len(flows) == 2 and all(len(f.segments) == 1 for f in flows), [
            f.summary() for f in flows
        ]
        stats = gp.wait_stats(lambda s: s.get("strategy_counts"))
        assert set(stats["strategy_counts"]) <= {"1", "2"}, stats
    assert ALLOWED not in state_of(state)
