"""The probe's own rules, as planned argv lists."""

from __future__ import annotations

import pytest
from govpass.config import Config
from govpass.errors import BackendError
from govpass.probe.intercept import DONE_BIT, QUEUE_BIT, QUEUE_FIRST, Marks, chain_name, plan
from govpass.rules.iptables import OUR_CHAINS


def test_plan_fills_the_chain_before_jumping_and_removes_the_jump_first() -> None:
    install, remove = plan(64800, 443, "iptables")
    chain = chain_name(64800)
    assert install[0][-2:] == ["-N", chain]
    assert install[-1][4:6] == ["-I", "OUTPUT"]
    assert remove[0][4] == "-D" and remove[0][5:] == install[-1][5:]
    assert [r[4] for r in remove[1:]] == ["-F", "-X"]
    queue = [r for r in install if "NFQUEUE" in r]
    assert queue and queue[0][-3:] == ["--queue-num", "64800", "--queue-bypass"]
    # Only the probe's marked sockets jump; what the engine sent is not queued again.
    assert f"{QUEUE_BIT:#x}/{QUEUE_BIT:#x}" in install[-1]
    assert any(f"{DONE_BIT:#x}/{DONE_BIT:#x}" in r and "RETURN" in r for r in install)


def test_chain_is_not_one_the_daemon_clears() -> None:
    assert chain_name(QUEUE_FIRST) not in OUR_CHAINS
    assert Config().queue_num + 256 < QUEUE_FIRST  # beyond the daemon's workers


def test_marks() -> None:
    m = Marks(Config().mark)
    assert m.plain == Config().mark  # the daemon skips every probe socket
    assert m.split & QUEUE_BIT and m.split & Config().mark
    assert m.engine & DONE_BIT and not m.engine & QUEUE_BIT
    with pytest.raises(BackendError, match="overlaps"):
        Marks(QUEUE_BIT | 1)
