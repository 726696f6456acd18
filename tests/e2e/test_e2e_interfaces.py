"""Interfaces in the netns lab: an excluded interface is never touched, and a
tunnel that comes up while the daemon runs is excluded from the rules."""

from __future__ import annotations

import time

import pytest
from e2e_support import BLOCKED, censoring, govpass_cli, govpass_rule_lines, mangle_rules, running
from govpass.lab import Lab


@pytest.mark.parametrize("mode", ["host", "router"])
def test_a_listed_interface_that_does_not_exist_is_one_line(host_lab: Lab, mode: str) -> None:
    proc = govpass_cli(host_lab, "client", ["run", "--mode", mode, "--iface", "nonexistent0"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("govpass: iface: "), proc.stderr
    assert "nonexistent0" in lines[0]
    assert govpass_rule_lines(host_lab, "client") == []


def test_excluded_interface_is_never_touched(host_lab: Lab) -> None:
    with (
        censoring(host_lab, "firstpacket"),
        running(host_lab, ["--exclude-iface", host_lab.iface("client")], name="excl") as gp,
    ):
        ok, detail = host_lab.client("curl", BLOCKED, family=4, timeout=3)
        assert not ok, f"the hello left through an excluded interface split: {detail}"
        stats = gp.stats()
        assert stats.get("packets", 0) == 0, stats
        assert stats.get("splits", 0) == 0, stats


def test_tunnel_coming_up_is_excluded_from_the_rules(host_lab: Lab) -> None:
    with running(host_lab, name="tun") as gp:
        rules = "\n".join(mangle_rules(host_lab, "client"))
        assert "tun7" not in rules
        host_lab.exec("client", ["ip", "tuntap", "add", "dev", "tun7", "mode", "tun"])
        try:
            deadline = time.monotonic() + 15
            # The rule shows up while the rules are being reinstalled; the log
            # line follows once the install is complete.
            while (
                "-o tun7 -j RETURN" not in "\n".join(mangle_rules(host_lab, "client"))
                or "interfaces changed" not in gp.log()
            ):
                assert time.monotonic() < deadline, gp.log()[-1500:]
                time.sleep(0.5)
            ok, detail = host_lab.client("curl", "allowed.example", family=4)
            assert ok, detail
        finally:
            host_lab.exec("client", ["ip", "link", "del", "tun7"], check=False)
