"""Workers run as SCHED_BATCH by default (no wake-up preemption of the
applications whose connections they handle), SCHED_OTHER on request."""

from __future__ import annotations

import os
import time

import pytest
from e2e_support import running
from govpass.lab import Lab


@pytest.mark.parametrize(
    ("flag", "policy"), [((), os.SCHED_BATCH), (("--worker-sched", "normal"), os.SCHED_OTHER)]
)
def test_worker_scheduling_policy(host_lab: Lab, flag: tuple[str, ...], policy: int) -> None:
    with running(host_lab, list(flag), name=f"sched-{policy}") as gp:
        deadline = time.monotonic() + 5
        while not gp.workers():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert [os.sched_getscheduler(pid) for pid in gp.workers()] == [policy]
