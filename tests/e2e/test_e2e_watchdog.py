"""The watchdog: a worker that is alive but does not run (SIGSTOP) is killed and
started again within ``worker-timeout``, so its queue fails open at once instead of
holding every new hello until the queue is full; the counters of a replaced worker
stay in ``govpass stats``.

``--kernel-split off``: every hello goes to the workers, which is what is tested.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from e2e_support import (
    ALLOWED,
    BLOCKED,
    FAMILIES,
    PASS_TIMEOUT,
    WORKERS_ONLY,
    Govpass,
    govpass_cli,
    queue_table_of,
    running,
)
from govpass.lab import Lab
from govpass.lab.netns import wait_for

pytestmark = pytest.mark.netns

CONNECTIONS = 6  # opened while the worker is stopped
BOUND = 1.0  # --worker-timeout
# A hello held by the stopped worker waits for the kill (BOUND plus the parent's
# check), is dropped by the queue's flush and is sent again by TCP (RTO >= 0.2 s).
COMPLETE_WITHIN = 4.0


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def timed_client(lab: Lab, i: int, timeout: float) -> tuple[bool, float, str]:
    start = time.monotonic()
    ok, detail = lab.client("curl", (BLOCKED, ALLOWED)[i % 2], FAMILIES[i % 2], timeout=timeout)
    return ok, time.monotonic() - start, detail


def connect_all(lab: Lab, n: int, timeout: float) -> list[tuple[bool, float, str]]:
    with ThreadPoolExecutor(max_workers=n) as pool:
        futures: list[Future[tuple[bool, float, str]]] = [
            pool.submit(timed_client, lab, i, timeout) for i in range(n)
        ]
        return [f.result() for f in futures]


def splits_after(gp: Govpass, lab: Lab, n: int, at_least: int) -> dict[str, object]:
    results = connect_all(lab, n, PASS_TIMEOUT)
    assert all(ok for ok, _, _ in results), results
    stats = gp.wait_stats(lambda s: s.get("splits", 0) >= at_least)
    assert stats.get("splits", 0) >= at_least, stats
    return stats


def test_a_stopped_worker_is_replaced_and_new_connections_complete(host_lab: Lab) -> None:
    lab = host_lab
    args = [*WORKERS_ONLY, "--worker-timeout", str(BOUND)]
    with running(lab, args, name="watchdog") as gp:
        before = splits_after(gp, lab, 3, 3)
        (old,) = gp.workers()
        with stopped(old):
            results = connect_all(lab, CONNECTIONS, PASS_TIMEOUT)
            gone = not os.path.exists(f"/proc/{old}") or _zombie(old)
        assert all(ok for ok, _, _ in results), results
        slowest = max(t for _, t, _ in results)
        assert slowest < COMPLETE_WITHIN, f"connections took {slowest:.1f} s: {results}"
        assert gone, "the stopped worker was not killed"
        wait_for(lambda: len(gp.workers()) == 1 and gp.workers() != [old], 10.0, "a new worker")
        assert "worker 0 (pid" in gp.log() and "has not run for" in gp.log(), gp.log()[-2000:]
        assert gp.log().count("has not run for") == 1, gp.log()[-2000:]
        # The replaced worker's splits are still counted, and the new one's added.
        after = splits_after(gp, lab, 3, int(before["splits"]) + 3)
        assert after["watchdog_restarts"] == 1, after
        assert after["worker_restarts"] == 1, after
        assert after["flows"] >= before["flows"], (before, after)
        shown = govpass_cli(lab, "client", ["stats"], gp.run_dir).stdout
        assert "of them hung (watchdog)" in shown and "workers restarted" in shown, shown


def test_worker_timeout_0_leaves_a_stopped_worker_alone(host_lab: Lab) -> None:
    """Without the watchdog, hellos wait in the queue of the stopped worker: the
    connections stall (as on a daemon without it) and the worker is not replaced."""
    lab = host_lab
    with running(lab, [*WORKERS_ONLY, "--worker-timeout", "0"], name="nowatchdog") as gp:
        (old,) = gp.workers()
        with stopped(old):
            results = connect_all(lab, 4, 2 * BOUND + 1.5)
            assert gp.workers() == [old]
        assert not any(ok for ok, _, _ in results), results
        ok, detail = lab.client("curl", BLOCKED, 4, timeout=PASS_TIMEOUT)
        assert ok, detail
        stats = gp.stats()
        assert gp.workers() == [old]
        assert stats.get("watchdog_restarts", 0) == 0, stats
        assert "has not run for" not in gp.log()


def test_a_restarted_worker_keeps_its_counters(host_lab: Lab) -> None:
    """A worker that dies (SIGKILL) is started again; `govpass stats` still counts
    the flows and splits of the one it replaced."""
    lab = host_lab
    with running(lab, list(WORKERS_ONLY), name="retired") as gp:
        before = splits_after(gp, lab, 4, 4)
        (old,) = gp.workers()
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: "worker 0 exited (code -9); restarting" in gp.log(), 10.0, "a restart")
        wait_for(lambda: len(gp.workers()) == 1 and gp.workers() != [old], 10.0, "a new worker")
        # Its process exists before its queue is bound: until then hellos pass by.
        wait_for(lambda: 200 in queue_table_of(lab), 10.0, "the new worker's queue")
        after = splits_after(gp, lab, 4, int(before["splits"]) + 4)
        assert after["flows"] >= int(before["flows"]) + 4, (before, after)
        assert after["worker_restarts"] == 1 and after.get("watchdog_restarts", 0) == 0, after
        assert after["workers"] == 1, after


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    return True
