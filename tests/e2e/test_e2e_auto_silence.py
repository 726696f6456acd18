"""Silence after the hello as a failure, end to end: the lab's ``dropsecond`` box lets
the first packet through (acknowledged) and silently drops the flow's later data, so
the client never sees a RST. A hello cut in two has its dropped tail resent, which the
rules queue for a watched flow (a resend failure); a hello sent whole gets through and
the server's reply is dropped, and then only the engine's silence timer
(``auto-silence``) tells the flow failed. Both auto modes must act on it."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from e2e_support import ALLOWED, BLOCKED, BLOCKED_TIMEOUT, PASS_TIMEOUT, censoring, running
from govpass.lab import Lab

pytestmark = pytest.mark.netns

SILENCE = ["--auto-silence", "1"]  # shorter than the client's timeout (BLOCKED_TIMEOUT)


def wait_for(pred: Any, timeout: float = 8.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_strategy_auto_moves_on_after_silence_and_converges(host_lab: Lab) -> None:
    """5 (the default), no split and 1 put the whole name in the first two segments:
    each fails and is left; 1,sni puts the name in the third segment and passes. The
    unsplit step fails in silence (nothing to resend); the split ones by whichever comes
    first, the resent tail or the silence."""
    state = host_lab.workdir / f"strategies-silence-{time.monotonic_ns()}.json"
    args = ["--strategy", "auto", "--strategy-state", str(state)]
    args += ["--strategy-ladder", "1;1,sni", *SILENCE]
    with censoring(host_lab, "dropsecond"), running(host_lab, args, name="silence") as gp:
        results: list[bool] = []
        for _ in range(6):
            changes = gp.stats().get("strategy_changes", 0)
            ok, _detail = host_lab.client("curl", BLOCKED, 4, timeout=BLOCKED_TIMEOUT)
            results.append(ok)
            if ok:
                break
            # The verdict comes from the timer, then travels worker -> parent -> state
            # file -> worker: the next connection must use the next step.
            wait_for(lambda c=changes: gp.stats().get("strategy_changes", 0) > c)
        assert results[-1], f"no convergence: {results}: {gp.log()[-3000:]}"
        assert results == [False, False, False, True], results
        hosts: dict[str, Any] = json.loads(state.read_text())["hosts"]
        assert hosts[BLOCKED]["strategy"] == "1,sni", hosts
        for i in range(3):
            ok, detail = host_lab.client("curl", BLOCKED, 4, timeout=PASS_TIMEOUT)
            assert ok, f"connection {i} after convergence: {detail}"
        ok, detail = host_lab.client("curl", ALLOWED, 4, timeout=PASS_TIMEOUT)
        assert ok, detail
        stats = gp.wait_stats(lambda s: s.get("auto_successes", 0) >= 5)
        assert stats["strategy_changes"] == 3, stats
        assert stats["auto_failures"] == 3, stats
        assert 1 <= stats["auto_silent"] <= 3, stats  # the unsplit step, at least
        decisions = host_lab.censor_decisions()
        # The box killed the three failing flows; the rest kept the name past its reach.
        assert [d["verdict"] for d in decisions if d["sni"] == BLOCKED] == ["kill"] * 3
        assert sum(d["reason"].startswith("gave up") for d in decisions) >= 4, decisions


def test_hostlist_auto_learns_a_name_only_silence_reveals(host_lab: Lab) -> None:
    """Unsplit, the hello gets through and the server's reply does not: the client has
    nothing to resend and sees no RST. Two silent failures teach the name; split at
    1,sni it then passes."""
    auto = host_lab.workdir / f"auto-silence-{time.monotonic_ns()}.txt"
    args = ["--hostlist-auto", str(auto), "--auto-fail-threshold", "2", *SILENCE]
    args += ["--split-chunk", "1", "--split-pos", "sni"]
    with censoring(host_lab, "dropsecond"), running(host_lab, args, name="learn") as gp:
        ok, detail = host_lab.client("curl", ALLOWED, 4, timeout=PASS_TIMEOUT)
        assert ok, f"an unlisted name that works: {detail}"
        for attempt in (1, 2):
            silent = gp.stats().get("auto_silent", 0)
            ok, _ = host_lab.client("curl", BLOCKED, 4, timeout=BLOCKED_TIMEOUT)
            assert not ok, f"attempt {attempt} passed"
            assert wait_for(lambda s=silent: gp.stats().get("auto_silent", 0) > s), gp.stats()
        assert wait_for(lambda: auto.exists() and BLOCKED in auto.read_text()), gp.log()[-3000:]
        assert wait_for(lambda: "lists reloaded (changed)" in gp.log()), gp.log()[-3000:]
        ok, detail = host_lab.client("curl", BLOCKED, 4, timeout=PASS_TIMEOUT)
        assert ok, f"learned name still blocked: {detail}: {gp.log()[-3000:]}"
        stats = gp.stats()
        assert stats["auto_learned"] == 1, stats
        assert stats["auto_failures"] == stats["auto_silent"] == 2, stats
        assert [ln for ln in auto.read_text().splitlines() if not ln.startswith("#")] == [BLOCKED]
