"""The mangle tables iptables-nft creates: gone with govpass's rules when govpass
made them, kept when they were there before; in a fresh network namespace."""

from __future__ import annotations

import pytest
from govpass import doctor
from govpass.config import Config
from govpass.rules import RuleSpec, install, remove, tables
from govpass.rules.runner import Runner
from rules_lab import Netns

pytestmark = pytest.mark.netns

SPEC = RuleSpec(prefilter="conntrack")


def ruleset(ns: Netns) -> list[str]:
    return [ln for ln in ns.run("nft", "list", "tables").stdout.splitlines() if ln.strip()]


@pytest.mark.parametrize("backend", ["iptables-nft", "iptables-legacy", None])
def test_a_clean_remove_leaves_the_ruleset_as_it_was(netns: Netns, backend: str | None) -> None:
    assert ruleset(netns) == []
    install(SPEC, netns.runner, backend)  # type: ignore[arg-type]
    remove(netns.runner)
    assert ruleset(netns) == []
    assert netns.run("nft", "list", "ruleset").stdout.strip() == ""


def test_tables_there_before_stay(netns: Netns) -> None:
    netns.run("nft", "add", "table", "ip", "mangle")
    install(SPEC, netns.runner, "iptables-nft")
    remove(netns.runner)
    assert ruleset(netns) == ["table ip mangle"]


def test_after_a_killed_daemon_the_next_remove_takes_the_tables(netns: Netns) -> None:
    install(SPEC, netns.runner, "iptables-nft")  # and no remove: the daemon got SIGKILL
    assert ruleset(netns) == ["table ip mangle", "table ip6 mangle"]
    remove(Runner(netns.prefix))
    assert ruleset(netns) == []


def test_a_table_that_holds_someone_elses_rule_stays(netns: Netns) -> None:
    install(SPEC, netns.runner, "iptables-nft")
    netns.run("iptables-nft", "-t", "mangle", "-A", "INPUT", "-p", "udp", "-j", "ACCEPT")
    remove(netns.runner)
    assert ruleset(netns) == ["table ip mangle"]
    assert tables.release(netns.runner) == []


def test_doctors_probes_leave_no_table(netns: Netns, monkeypatch: pytest.MonkeyPatch) -> None:
    from govpass import rules

    monkeypatch.setattr(rules, "Runner", lambda: Runner(netns.prefix))
    monkeypatch.setattr(rules, "inventory", lambda: [])
    checks = doctor.check_firewall(Config(kernel_split="off", prefilter="conntrack"))
    assert any(c.name.startswith("firewall iptables") and c.status == "ok" for c in checks)
    assert ruleset(netns) == []
