from __future__ import annotations

from govpass.rules import RuleSpec
from govpass.rules import nftables as nft

HOST_TABLE = """\
table inet govpass {
\tchain output {
\t\ttype filter hook output priority mangle; policy accept;
\t\tmeta l4proto tcp tcp dport 443 jump govpass
\t}
\tchain govpass {
\t\tmeta mark & 0x10000000 == 0x10000000 return
\t\toifname "lo" return
\t\ttcp flags & syn == syn return
\t\tct original packets >= 12 return
\t\tct mark & 0x20000000 == 0x20000000 counter queue num 200 bypass
\t\t@ih,0,16 0x1603 @ih,40,8 0x1 ct mark set ct mark | 0x20000000 counter queue num 200 bypass
\t}
\tchain postrouting {
\t\ttype filter hook postrouting priority mangle; policy accept;
\t\tmeta l4proto tcp tcp dport 443 meta mark & 0x10000000 == 0x10000000 \
ct mark & 0x20000000 == 0x20000000 ct mark set ct mark & 0xdfffffff
\t}
}
"""


def test_host_exact() -> None:
    assert nft.render_table(RuleSpec()) == HOST_TABLE


def test_install_script_replaces_atomically() -> None:
    script = nft.render_install(RuleSpec())
    head = script.splitlines()[:3]
    assert head == ["table inet govpass", "delete table inet govpass", "table inet govpass {"]
    assert script.endswith(HOST_TABLE)


def test_remove_script_tolerates_absence() -> None:
    assert nft.render_remove() == "table inet govpass\ndelete table inet govpass\n"


def test_router_mode() -> None:
    spec = RuleSpec(mode="router", interfaces=("wan0", "ppp+"), exclude_interfaces=("wg0",))
    text = nft.render_table(spec)
    assert "chain forward {" in text
    assert "type filter hook forward priority mangle; policy accept;" in text
    assert 'oifname "wan0" meta l4proto tcp tcp dport 443 jump govpass' in text
    assert 'oifname "ppp*" meta l4proto tcp tcp dport 443 jump govpass' in text
    assert 'oifname "wg0" return' in text
    assert 'oifname "lo"' not in text
    assert "hook output" not in text


def test_single_family_is_restricted() -> None:
    v4 = nft.render_table(RuleSpec(ipv6=False))
    assert "meta nfproto ipv4 meta l4proto tcp tcp dport 443 jump govpass" in v4
    assert "meta nfproto ipv4 meta l4proto tcp tcp dport 443 meta mark" in v4
    v6 = nft.render_table(RuleSpec(ipv4=False))
    assert "meta nfproto ipv6 meta l4proto tcp" in v6
    assert "nfproto" not in nft.render_table(RuleSpec())


def test_queue_statement_variants() -> None:
    assert nft.queue_statement(RuleSpec()) == "counter queue num 200 bypass"
    assert nft.queue_statement(RuleSpec(bypass=False)) == "counter queue num 200"
    assert nft.queue_statement(RuleSpec(queue_num=3, queue_count=4)) == (
        "counter queue num 3-6 bypass"
    )
    assert nft.queue_statement(RuleSpec(queue_count=2, bypass=False)) == "counter queue num 200-201"


def test_ports_marks_bound() -> None:
    spec = RuleSpec(ports=(443, 853), mark=0x1, watch_mark=0x100, max_packets=4)
    text = nft.render_table(spec)
    assert "tcp dport { 443, 853 } jump govpass" in text
    assert "meta mark & 0x1 == 0x1 return" in text
    assert "ct original packets >= 4 return" in text
    assert "ct mark set ct mark | 0x100 counter queue" in text
    assert "ct mark set ct mark & 0xfffffeff" in text


def test_same_order_as_iptables() -> None:
    body = nft.chain_body(RuleSpec(exclude_interfaces=("wg0",)))
    assert [rule.split()[0] for rule in body] == [
        "meta", "oifname", "oifname", "tcp", "ct", "ct", "@ih,0,16",
    ]  # fmt: skip
