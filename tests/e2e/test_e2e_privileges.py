"""Least privilege after start: a root-started daemon's workers run as an unprivileged
user with CAP_NET_ADMIN only, no_new_privs and a seccomp filter (read from /proc), and
still split a connection through the first-packet censor; the daemon itself keeps
only what rules and the kernel split need; `--user root` keeps uid 0."""

from __future__ import annotations

import pwd

import pytest
from e2e_support import BLOCKED, WORKERS_ONLY, censoring, govpass_cli, running
from govpass.lab import Lab
from govpass.privileges import PARENT_CAPS, status_fields

pytestmark = pytest.mark.netns

NET_ADMIN = 1 << 12
NET_RAW = 1 << 13


def expected_uid() -> int:
    for name in ("govpass", "nobody"):
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            continue
    pytest.skip("neither a govpass nor a nobody user")


def test_root_started_workers_drop_to_the_unprivileged_user(host_lab: Lab) -> None:
    uid = expected_uid()
    with censoring(host_lab, "firstpacket"), running(host_lab, WORKERS_ONLY) as gp:
        workers = gp.workers()
        assert workers, gp.log()
        for pid in workers:
            f = status_fields(pid)
            assert f["Uid"] == str(uid), f
            assert int(f["CapEff"], 16) == NET_ADMIN, f
            assert int(f["CapPrm"], 16) == NET_ADMIN, f
            assert int(f["CapBnd"], 16) == NET_ADMIN, f
            assert f["NoNewPrivs"] == "1" and f["Seccomp"] == "2", f
        parent = status_fields(gp.pid or 0)
        assert parent["Uid"] == "0", parent
        kept = sum(1 << c for c in PARENT_CAPS)  # those of them the test itself holds
        for field in ("CapEff", "CapBnd"):
            held = int(parent[field], 16)
            assert held & ~kept == 0 and held & NET_ADMIN and held & NET_RAW, parent
        ok, detail = host_lab.client("curl", BLOCKED, family=4)
        assert ok, f"blocked name did not pass with govpass: {detail}\n{gp.log()[-2000:]}"
        stats = gp.wait_stats(lambda s: s.get("splits", 0) >= 1)
        assert stats.get("splits", 0) >= 1, stats
        assert f"privileges: workers uid {uid}, caps net_admin, no_new_privs 1" in gp.log()
        doctor = govpass_cli(host_lab, "client", ["doctor", "--json"], gp.run_dir)
        assert f"uid {uid}, caps net_admin, no_new_privs 1, seccomp 2" in doctor.stdout, (
            doctor.stdout
        )


def test_user_root_keeps_uid_0(host_lab: Lab) -> None:
    with running(host_lab, [*WORKERS_ONLY, "--user", "root"]) as gp:
        for pid in gp.workers():
            f = status_fields(pid)
            assert f["Uid"] == "0" and f["Seccomp"] == "0", f


def test_unknown_user_is_one_line(host_lab: Lab) -> None:
    proc = govpass_cli(host_lab, "client", ["run", "--user", "no-such-user-x"], None)
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "user" in lines[0], proc.stderr
