"""ipfw and pf rules for the divert backend: the exact commands and anchor text,
and the executors' control flow against a fake ipfw/pfctl."""

from __future__ import annotations

import pytest
from divert_fakes import FakeFirewall
from govpass.errors import FirewallError
from govpass.rules import bsd
from govpass.rules.bsd import BsdRuleSpec
from govpass.rules.spec import RuleSpecError


def w(text: str) -> list[str]:
    """Words of a rule as written in ipfw(8) examples."""
    return text.split()


HEAD = w("add 100 divert 4430 tcp from any to any 443 out not diverted")


def test_ipfw_default_rules_divert_only_outbound_data_fin_and_rst() -> None:
    assert bsd.ipfw_rules(BsdRuleSpec()) == [
        [*HEAD, "not", "xmit", "lo0", "tcpflags", "!syn", "tcpdatalen", "1-65535"],
        [*HEAD, "not", "xmit", "lo0", "tcpflags", "fin"],
        [*HEAD, "not", "xmit", "lo0", "tcpflags", "rst"],
    ]
    assert all(argv[0] == "ipfw" for argv in bsd.plan_ipfw_install(BsdRuleSpec()))


def test_ipfw_router_mode_on_two_wan_interfaces_ipv4_only() -> None:
    spec = BsdRuleSpec(
        divert_port=989,
        ports=(443, 8443),
        mode="router",
        interfaces=("igb0", "igb1.100"),
        ipv6=False,
        ipfw_rule=5000,
    )
    first = bsd.ipfw_rules(spec)[0]
    assert first == [
        *w("add 5000 divert 989 tcp from any to any 443,8443 out not diverted ip4"),
        *w("{ xmit igb0 or xmit igb1.100 }"),
        *w("tcpflags !syn tcpdatalen 1-65535"),
    ]
    assert "lo0" not in first  # an include list needs no loopback exclusion


def test_ipfw_exclusions_and_ipv6_only() -> None:
    spec = BsdRuleSpec(exclude_interfaces=("wg0", "tun0"), ipv4=False)
    rule = bsd.ipfw_rules(spec)[1]
    assert rule == [
        *HEAD,
        "ip6",
        *w("not xmit lo0 not xmit wg0 not xmit tun0 tcpflags fin"),
    ]


def test_ipfw_list_parsing_tells_ours_from_foreign() -> None:
    text = (
        "00100 divert 4430 tcp from any to any 443 out not diverted tcpflags fin\n"
        "00100 allow ip from any to any\n"
        "00200 divert 4430 tcp from any to any 443 out\n"
    )
    state = bsd.parse_ipfw_list(text, BsdRuleSpec())
    assert state.ours == (text.splitlines()[0],)
    assert state.foreign == ("00100 allow ip from any to any",)


def test_ipfw_install_is_idempotent_and_remove_cleans_up() -> None:
    fw = FakeFirewall()
    spec = BsdRuleSpec()

    first = bsd.install(spec, "ipfw", fw)
    assert len(fw.ipfw) == 3 and first.changed
    bsd.install(spec, "ipfw", fw)
    assert len(fw.ipfw) == 3, "installing again replaces"
    assert ("ipfw", "delete", "100") in fw.calls
    assert "divert 4430" in bsd.show(spec, "ipfw", fw)

    assert bsd.remove(spec, "ipfw", fw).changed
    assert fw.ipfw == []
    assert not bsd.remove(spec, "ipfw", fw).changed  # nothing left: still success
    assert "no ipfw rules" in bsd.show(spec, "ipfw", fw)


def test_ipfw_refuses_a_rule_number_held_by_someone_else() -> None:
    fw = FakeFirewall(ipfw_rules=["00100 allow tcp from any to any 22 in"])
    with pytest.raises(FirewallError, match="--ipfw-rule"):
        bsd.install(BsdRuleSpec(), "ipfw", fw)
    assert not [c for c in fw.calls if c[1] in ("add", "delete")]
    assert not bsd.remove(BsdRuleSpec(), "ipfw", fw).changed
    assert fw.ipfw == ["00100 allow tcp from any to any 22 in"]


def test_ipfw_failed_add_rolls_back_the_rules_already_added() -> None:
    fw = FakeFirewall(fail_add=1)
    with pytest.raises(FirewallError, match="rolled back"):
        bsd.install(BsdRuleSpec(), "ipfw", fw)
    assert fw.ipfw == []


def test_pf_anchor_freebsd_default() -> None:
    text = bsd.render_pf_anchor(BsdRuleSpec())
    rules = [line for line in text.splitlines() if not line.startswith("#")]
    assert rules == [
        'pass out quick on ! lo0 proto tcp from any to any port 443 divert-to 4430 label "govpass"'
    ]


def test_pf_anchor_openbsd_two_families_ports_and_wan() -> None:
    spec = BsdRuleSpec(
        pf_flavor="openbsd", ports=(443, 853), mode="router", interfaces=("em0",), ipv6=False
    )
    rules = [line for line in bsd.render_pf_anchor(spec).splitlines() if line[0] != "#"]
    assert rules == [
        "pass out quick on em0 inet proto tcp from any to any port { 443, 853 }"
        ' divert-packet port 4430 label "govpass"'
    ]


def test_pf_several_exclusions_use_a_skip_tag() -> None:
    spec = BsdRuleSpec(exclude_interfaces=("wg0",))
    rules = [line for line in bsd.render_pf_anchor(spec).splitlines() if line[0] != "#"]
    assert rules == [
        "match out on { lo0, wg0 } tag GOVPASS_SKIP",
        "pass out quick proto tcp from any to any port 443 ! tagged GOVPASS_SKIP"
        ' divert-to 4430 label "govpass"',
    ]


def test_pf_install_loads_the_anchor_and_remove_flushes_it_and_its_states() -> None:
    fw = FakeFirewall()
    spec = BsdRuleSpec()

    bsd.install(spec, "pf", fw)
    assert fw.calls[-1] == ("pfctl", "-a", "govpass", "-f", "-")
    assert fw.inputs[-1] == bsd.render_pf_anchor(spec)
    assert "divert-to 4430" in bsd.show(spec, "pf", fw)

    result = bsd.remove(spec, "pf", fw)
    assert result.changed
    assert fw.calls[-2:] == [
        ("pfctl", "-a", "govpass", "-F", "rules"),
        ("pfctl", "-k", "label", "-k", "govpass"),
    ]
    assert "is empty" in bsd.show(spec, "pf", fw)


def test_pf_install_refuses_when_the_main_ruleset_never_calls_the_anchor() -> None:
    fw = FakeFirewall(pf_main="pass out all keep state\n")
    with pytest.raises(FirewallError, match='anchor "govpass"'):
        bsd.install(BsdRuleSpec(), "pf", fw)
    assert fw.anchors == {}


@pytest.mark.parametrize(
    ("main", "anchor", "called"),
    [
        ('anchor "govpass" all\n', "govpass", True),
        ('anchor "userrules/*" all\n', "userrules/govpass", True),
        ('anchor "other" all\n', "govpass", False),
        ('pass out all # anchor "govpass"\n', "govpass", False),
    ],
)
def test_anchor_is_called(main: str, anchor: str, called: bool) -> None:
    assert bsd.anchor_is_called(main, anchor) is called


def test_render_plan_for_dry_runs() -> None:
    ipfw = bsd.render_plan(BsdRuleSpec(), "ipfw")
    assert ipfw.splitlines()[0].startswith("ipfw add 100 divert 4430 tcp")
    assert len(ipfw.splitlines()) == 3
    pf = bsd.render_plan(BsdRuleSpec(), "pf")
    assert pf.startswith("# pfctl -a govpass -f - <<EOF") and "divert-to 4430" in pf


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "router"}, "router mode needs"),
        ({"divert_port": 0}, "divert port"),
        ({"ports": (443, 443)}, "duplicates"),
        ({"ipfw_rule": 65535}, "ipfw rule number"),
        ({"pf_anchor": "bad anchor"}, "anchor"),
        ({"interfaces": ("em0;reboot",)}, "invalid interface"),
        ({"ipv4": False, "ipv6": False}, "ipv4 / ipv6"),
    ],
)
def test_spec_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(RuleSpecError, match=message):
        BsdRuleSpec(**kwargs)  # type: ignore[arg-type]
