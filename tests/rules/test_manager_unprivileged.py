"""The manager as an unprivileged user holding CAP_NET_ADMIN (the systemd unit's
DynamicUser): the legacy tables cannot be listed without naming one, since
/proc/net/ip_tables_names is root's only. Scripted fake runner, no root."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from govpass.errors import FirewallError
from govpass.rules import RuleSpec, install, manager, remove
from test_manager_unit import ALL, FakeRunner, nft_without_queue, version

NAMES_DENIED = "Failed to list table names in /proc/net/ip_tables_names: Permission denied"
LEFTOVER = "*mangle\n:GOVPASS - [0:0]\n-A OUTPUT -j GOVPASS\nCOMMIT\n"


@pytest.fixture(autouse=True)
def _fresh_process() -> Iterator[None]:
    """Each test is a new process: no legacy rules installed by it yet."""
    saved = set(manager._legacy_in_use)
    manager._legacy_in_use.clear()
    yield
    manager._legacy_in_use.clear()
    manager._legacy_in_use.update(saved)


class LegacyWorld:
    """Legacy mangle tables that list only by name for this user; `leftover` in ipv4."""

    def __init__(self, leftover: bool, plain_iptables: str = "nf_tables") -> None:
        self.leftover = leftover
        self.plain_iptables = plain_iptables

    def __call__(self, call: tuple[str, ...], _i: str | None) -> tuple[int, str, str] | None:
        if call == ("iptables", "-V") or call == ("ip6tables", "-V"):
            return 0, f"{call[0]} v1.8.9 ({self.plain_iptables})\n", ""
        if call[0] in ("iptables-legacy-save", "ip6tables-legacy-save"):
            if call[1:] != ("-t", "mangle"):
                return 1, "", NAMES_DENIED
            mine = self.leftover and call[0] == "iptables-legacy-save"
            return 0, LEFTOVER if mine else "*mangle\nCOMMIT\n", ""
        if call[0] == "iptables-legacy" and "-X" in call:
            self.leftover = False
        return None


def test_unreadable_legacy_is_skipped_with_a_note_when_nothing_uses_it() -> None:
    runner = FakeRunner(ALL, [LegacyWorld(leftover=True), version])
    result = remove(runner)
    assert result.removed == ()
    assert result.not_inspected.startswith("iptables-legacy ipv4, iptables-legacy ipv6 ")
    assert "/proc/net/ip_tables_names" in result.not_inspected
    # Naming the table would have created (and hooked) an empty legacy mangle table.
    assert not any(c[0].endswith("legacy-save") and "-t" in c for c in runner.calls)


def test_legacy_is_listed_by_name_where_it_is_the_system_firewall() -> None:
    world = LegacyWorld(leftover=True, plain_iptables="legacy")
    runner = FakeRunner(ALL, [world, version])
    result = remove(runner)
    assert result.removed == ("iptables-legacy ipv4",)
    assert result.not_inspected == ""
    assert not world.leftover


def test_legacy_rules_of_this_process_are_seen_and_removed() -> None:
    world = LegacyWorld(leftover=False)
    runner = FakeRunner(ALL, [world, version, nft_without_queue])
    result = install(RuleSpec(), runner, backend="iptables-legacy")
    assert result.backend == "iptables-legacy"
    assert "not inspected" not in result.reason
    world.leftover = True  # what the install added, as the fake world now lists it
    assert remove(runner).removed == ("iptables-legacy ipv4",)


def test_install_with_nftables_says_legacy_was_not_inspected() -> None:
    runner = FakeRunner(ALL, [LegacyWorld(leftover=False), version])
    result = install(RuleSpec(), runner)
    assert result.backend == "nftables"
    assert "iptables-legacy ipv4, iptables-legacy ipv6 not inspected" in result.reason


def test_unreadable_nft_variant_is_still_an_error() -> None:
    def denied(call: tuple[str, ...], _i: str | None) -> tuple[int, str, str] | None:
        if call[0] == "iptables-nft-save":
            return 1, "", "iptables-nft-save: Permission denied (you must be root)"
        return None

    runner = FakeRunner(ALL, [LegacyWorld(leftover=False), denied, version])
    with pytest.raises(FirewallError, match="Permission denied"):
        remove(runner)
