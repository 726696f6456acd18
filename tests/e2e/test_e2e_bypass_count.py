"""Connections that passed a queue by, unsplit, are counted: `bypassed` in
``govpass stats`` grows by about the hellos sent while no worker took them.

Two ways a queue is passed by: no worker bound to it (the worker is dead and the
parent, stopped here, cannot start another), and a full queue (the worker is
stopped, the watchdog off, ``--queue-len`` at its minimum). ``--kernel-split
off``: every hello goes to the workers, so every connection is one queued hello.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest
from e2e_support import (
    ALLOWED,
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
from test_e2e_watchdog import stopped

pytestmark = pytest.mark.netns

N = 12
QUEUE_LEN = 16  # the smallest the setting takes


def allowed(lab: Lab, n: int, parallel: int = 1) -> list[tuple[bool, str]]:
    """`n` connections to the name the censor lets through: unsplit, they complete too."""
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [
            pool.submit(lab.client, "curl", ALLOWED, FAMILIES[i % 2], timeout=PASS_TIMEOUT)
            for i in range(n)
        ]
        return [f.result() for f in futures]


def all_ok(results: list[tuple[bool, str]]) -> None:
    assert all(ok for ok, _ in results), results


def bypassed(gp: Govpass) -> int:
    stats = gp.wait_stats(lambda s: "bypassed" in s)
    assert "bypassed" in stats, stats
    return int(stats["bypassed"])


def test_connections_while_no_worker_is_bound_are_counted(host_lab: Lab) -> None:
    lab = host_lab
    with running(lab, list(WORKERS_ONLY), name="bypass-dead") as gp:
        all_ok(allowed(lab, 2))
        assert gp.pid is not None
        start = bypassed(gp)
        (old,) = gp.workers()
        with stopped(gp.pid):  # no restart while stopped: the queue stays unbound
            os.kill(old, signal.SIGKILL)
            wait_for(lambda: 200 not in queue_table_of(lab), 5.0, "the queue to be released")
            all_ok(allowed(lab, N))
        wait_for(lambda: "worker 0 exited" in gp.log(), 10.0, "a restart")
        now = gp.wait_stats(lambda s: s.get("bypassed", 0) - start >= N)
        grown = int(now["bypassed"]) - start
        # One hello per connection; the rest of each record fits the same packet.
        assert N <= grown <= N + 2, (start, now)
        assert "passed unmodified without a worker" in gp.log(), gp.log()[-2000:]
        shown = govpass_cli(lab, "client", ["stats"], gp.run_dir).stdout
        assert "packets passed by the queues" in shown, shown
        # A worker again (once its queue is bound): the count stays.
        wait_for(lambda: 200 in queue_table_of(lab), 10.0, "the new worker's queue")
        all_ok(allowed(lab, 2))
        assert bypassed(gp) == int(now["bypassed"])


def test_connections_while_the_queue_is_full_are_counted(host_lab: Lab) -> None:
    lab = host_lab
    args = [*WORKERS_ONLY, "--worker-timeout", "0", "--queue-len", str(QUEUE_LEN)]
    with running(lab, args, name="bypass-full") as gp:
        all_ok(allowed(lab, 2))
        start = bypassed(gp)
        (worker,) = gp.workers()
        with ThreadPoolExecutor(max_workers=QUEUE_LEN) as pool, stopped(worker):
            # These hellos fill the queue; TCP does not resend a packet the host still
            # holds, so they wait for the worker.
            held = [
                pool.submit(lab.client, "curl", ALLOWED, 4, timeout=PASS_TIMEOUT)
                for _ in range(QUEUE_LEN)
            ]
            wait_for(lambda: _queued(lab) >= QUEUE_LEN, 5.0, "a full queue")
            all_ok(allowed(lab, N))  # every later hello passes by at once
            during = gp.wait_stats(lambda s: s.get("bypassed", 0) - start >= N)
        all_ok([f.result() for f in held])  # released once the worker runs again
        grown = int(during["bypassed"]) - start
        assert N <= grown <= N + 2, (start, during)


def _queued(lab: Lab) -> int:
    line = queue_table_of(lab).get(200, "")
    cols = line.split()
    return int(cols[2]) if len(cols) > 2 else 0
