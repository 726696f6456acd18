"""install / show / remove against the real tools, inside a fresh network namespace."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from govpass.errors import FirewallError
from govpass.rules import RuleSpec, Runner, install, inventory, remove, show
from govpass.rules import nftables as nft
from govpass.rules.detect import BACKENDS, detect, nft_error_summary, unavailable_reason
from govpass.rules.runner import CommandResult
from rules_lab import Netns

pytestmark = pytest.mark.netns

IPT_BACKENDS = ["iptables-nft", "iptables-legacy"]
# The conntrack pre-filter: its rules are the same in every iptables flavour
# (the eBPF one has its own tests in test_netns_bpf.py).
SPEC = RuleSpec(prefilter="conntrack")


def tool(family: str, backend: str) -> str:
    return ("iptables" if family == "ipv4" else "ip6tables") + backend.removeprefix("iptables")


def mangle_dump(ns: Netns, backend: str, family: str) -> list[str]:
    """The mangle table as rules, without comments and counters."""
    res = ns.run(f"{tool(family, backend)}-save", check=False)
    lines, inside = [], False
    for line in res.stdout.splitlines():
        if line.startswith("*"):
            inside = line == "*mangle"
        elif inside and not line.startswith("#"):
            lines.append(line.split(" [")[0] if line.startswith(":") else line)
    return lines


def govpass_lines(ns: Netns) -> list[str]:
    out = []
    for backend in IPT_BACKENDS:
        for family in ("ipv4", "ipv6"):
            out += [ln for ln in mangle_dump(ns, backend, family) if "GOVPASS" in ln]
    nft_tables = ns.run("nft", "list", "tables").stdout
    out += [ln for ln in nft_tables.splitlines() if "govpass" in ln]
    return out


@pytest.mark.parametrize("backend", IPT_BACKENDS)
def test_install_show_remove(netns: Netns, backend: str) -> None:
    result = install(SPEC, netns.runner, backend)  # type: ignore[arg-type]
    assert result.backend == backend
    assert result.families == ("ipv4", "ipv6")
    text = show(netns.runner)
    for family in ("ipv4", "ipv6"):
        assert f"{backend} {family} (table mangle):" in text
    assert "-N GOVPASS\n" in text and "-N GOVPASS_POST\n" in text
    assert "-A OUTPUT -p tcp -m tcp --dport 443 -j GOVPASS" in text
    assert "-A POSTROUTING -p tcp -m tcp --dport 443 -j GOVPASS_POST" in text
    for family in ("ipv4", "ipv6"):
        dump = mangle_dump(netns, backend, family)
        assert ":GOVPASS -" in dump and ":GOVPASS_POST -" in dump
        assert sum("-j NFQUEUE" in ln for ln in dump) == 2

    removed = remove(netns.runner)
    assert set(removed.removed) == {f"{backend} ipv4", f"{backend} ipv6"}
    assert govpass_lines(netns) == []
    assert show(netns.runner) == "govpass: no interception rules installed\n"


@pytest.mark.parametrize("backend", IPT_BACKENDS)
def test_install_twice_leaves_one_copy(netns: Netns, backend: str) -> None:
    install(SPEC, netns.runner, backend)  # type: ignore[arg-type]
    once = {f: mangle_dump(netns, backend, f) for f in ("ipv4", "ipv6")}
    install(SPEC, netns.runner, backend)  # type: ignore[arg-type]
    twice = {f: mangle_dump(netns, backend, f) for f in ("ipv4", "ipv6")}
    assert once == twice
    assert sum(ln.endswith("-j GOVPASS") for ln in twice["ipv4"]) == 1
    remove(netns.runner)


def test_reinstall_with_other_spec_replaces(netns: Netns) -> None:
    install(
        RuleSpec(interfaces=("eth0", "eth1"), prefilter="conntrack"), netns.runner, "iptables-nft"
    )
    install(RuleSpec(queue_count=4, prefilter="conntrack"), netns.runner, "iptables-nft")
    dump = mangle_dump(netns, "iptables-nft", "ipv4")
    jumps = [ln for ln in dump if ln.endswith("-j GOVPASS")]
    assert jumps == ["-A OUTPUT -p tcp -m tcp --dport 443 -j GOVPASS"]
    assert sum("--queue-balance 200:203" in ln for ln in dump) == 2
    remove(netns.runner)


def test_switching_backend_removes_the_other(netns: Netns) -> None:
    install(SPEC, netns.runner, "iptables-legacy")
    install(SPEC, netns.runner, "iptables-nft")
    assert [i.where for i in inventory(netns.runner)] == ["iptables-nft ipv4", "iptables-nft ipv6"]
    remove(netns.runner)


def test_remove_when_nothing_installed(netns: Netns) -> None:
    result = remove(netns.runner)
    assert result.nothing_installed
    assert result.commands == ()
    assert remove(netns.runner).nothing_installed


def test_remove_cleans_crash_leftovers(netns: Netns) -> None:
    # What a crash can leave: chains without jumps, a jump from an older spec,
    # a half-filled chain, the probe chain, and an nft table of an older version.
    for family in ("ipv4", "ipv6"):
        legacy, nftb = tool(family, "iptables-legacy"), tool(family, "iptables-nft")
        netns.run(legacy, "-t", "mangle", "-N", "GOVPASS")
        netns.run(legacy, "-t", "mangle", "-A", "GOVPASS", "-o", "lo", "-j", "RETURN")
        netns.run(legacy, "-t", "mangle", "-N", "GOVPASS_PROBE")
        netns.run(nftb, "-t", "mangle", "-N", "GOVPASS")
        netns.run(nftb, "-t", "mangle", "-N", "GOVPASS_POST")
        netns.run(nftb, "-t", "mangle", "-A", "FORWARD", "-o", "wan9", "-j", "GOVPASS")
        netns.run(nftb, "-t", "mangle", "-A", "FORWARD", "-o", "wan9", "-j", "GOVPASS")
        netns.run(nftb, "-t", "mangle", "-A", "POSTROUTING", "-j", "GOVPASS_POST")
    netns.run("nft", "add", "table", "inet", "govpass")
    netns.run("nft", "add", "chain", "inet", "govpass", "govpass")
    assert govpass_lines(netns)

    result = remove(netns.runner)
    assert "nftables" in result.removed
    assert {"iptables-legacy ipv4", "iptables-nft ipv6"} <= set(result.removed)
    assert govpass_lines(netns) == []

    # and an install on top of leftovers leaves exactly one copy
    netns.run("iptables-nft", "-t", "mangle", "-N", "GOVPASS")
    netns.run("iptables-nft", "-t", "mangle", "-A", "OUTPUT", "-j", "GOVPASS")
    install(SPEC, netns.runner, "iptables-nft")
    dump = mangle_dump(netns, "iptables-nft", "ipv4")
    assert sum(ln.endswith("-j GOVPASS") for ln in dump) == 1
    remove(netns.runner)


class FailOn(Runner):
    """Real runner that fails one planned command, as a kernel or lock error would."""

    def __init__(self, prefix: Sequence[str], needle: str) -> None:
        super().__init__(prefix)
        self.needle = needle

    def run(
        self, argv: Sequence[str], *, input_text: str | None = None, check: bool = True
    ) -> CommandResult:
        if self.needle in " ".join(argv) and "-D" not in argv:
            result = CommandResult(tuple(argv), 4, "", "iptables: simulated failure.\n")
            if check:
                raise FirewallError(result.error_line())
            return result
        return super().run(argv, input_text=input_text, check=check)


@pytest.mark.parametrize("backend", IPT_BACKENDS)
def test_failure_midway_rolls_back(netns: Netns, backend: str) -> None:
    # IPv4 installs completely, IPv6 fails at its last command (the POSTROUTING jump).
    runner = FailOn(netns.prefix, f"{tool('ipv6', backend)} -w -t mangle -I POSTROUTING")
    with pytest.raises(FirewallError) as err:
        install(SPEC, runner, backend)  # type: ignore[arg-type]
    message = str(err.value)
    assert "\n" not in message
    assert "-I POSTROUTING" in message and "simulated failure" in message
    assert "rolled back" in message
    assert govpass_lines(netns) == []


def test_ipv4_only(netns: Netns) -> None:
    result = install(RuleSpec(ipv6=False), netns.runner, "iptables-nft")
    assert result.families == ("ipv4",)
    assert [i.where for i in inventory(netns.runner)] == ["iptables-nft ipv4"]
    remove(netns.runner)


def test_router_mode(netns: Netns) -> None:
    spec = RuleSpec(mode="router", interfaces=("wan0", "ppp+"), exclude_interfaces=("wg0",))
    result = install(spec, netns.runner, "iptables-nft")
    dump = mangle_dump(netns, "iptables-nft", "ipv4")
    assert "-A FORWARD -o ppp+ -p tcp -m tcp --dport 443 -j GOVPASS" in dump
    assert "-A FORWARD -o wan0 -p tcp -m tcp --dport 443 -j GOVPASS" in dump
    # the exclusions sit in the chain that queues: GOVPASS_Q with the eBPF pre-filter
    chain = "GOVPASS_Q" if result.prefilter == "bpf" else "GOVPASS"
    assert f"-A {chain} -o wg0 -j RETURN" in dump
    assert not any(ln.startswith("-A OUTPUT") for ln in dump)
    remove(netns.runner)


def _nft_queue_works(ns: Netns) -> bool:
    script = "table inet gpqprobe { chain c { type filter hook output priority 0; queue num 9; } }"
    res = ns.runner.run(["nft", "-c", "-f", "-"], input_text=script + "\n", check=False)
    return res.ok


def test_detection_prefers_nft_only_when_queue_works(netns: Netns) -> None:
    detection = detect(SPEC, netns.runner)
    assert detection.chosen is not None
    assert detection.chosen.name in BACKENDS
    nft_reason = unavailable_reason("nftables", SPEC, netns.runner)
    if _nft_queue_works(netns):
        assert detection.chosen.name == "nftables"
        assert nft_reason is None
    else:
        assert detection.chosen.name != "nftables"
        assert nft_reason is not None and "nft_queue" in nft_reason
        with pytest.raises(FirewallError, match="nft_queue"):
            install(SPEC, netns.runner, "nftables")
        assert govpass_lines(netns) == []
    # the probe leaves nothing of ours behind
    assert govpass_lines(netns) == []


def test_auto_install_reports_backend_and_reason(netns: Netns) -> None:
    result = install(SPEC, netns.runner)
    assert result.backend in BACKENDS
    assert result.reason
    if result.backend != "nftables":
        assert "nftables:" in result.reason  # says why nft was skipped
    remove(netns.runner)
    assert govpass_lines(netns) == []


NFT_SPECS = [
    RuleSpec(),
    RuleSpec(ipv6=False, ports=(443, 853), queue_count=4),
    RuleSpec(ipv4=False, bypass=False, exclude_interfaces=("wg0", "tun+")),
    RuleSpec(mode="router", interfaces=("wan0", "ppp+"), mark=0x1, watch_mark=0x2, max_packets=3),
]


@pytest.mark.parametrize("spec", NFT_SPECS)
def test_nft_script_is_valid(netns: Netns, spec: RuleSpec) -> None:
    """Everything but the queue statement is checked by the kernel (nft -c); the queue
    statement itself is accepted by nft's parser and only refused by a kernel without
    nft_queue."""
    script = nft.render_install(spec)
    queue = nft.queue_statement(spec)
    without_queue = script.replace(queue, "counter")
    res = netns.runner.run(["nft", "-c", "-f", "-"], input_text=without_queue, check=False)
    assert res.ok, nft_error_summary(res.stderr)
    res = netns.runner.run(["nft", "-c", "-f", "-"], input_text=script, check=False)
    if not res.ok:
        errors = [ln for ln in res.stderr.splitlines() if "Error:" in ln]
        assert errors and all("Could not process rule" in ln for ln in errors)
        carets = [ln for ln in res.stderr.splitlines() if ln.strip().startswith("^")]
        sources = res.stderr.splitlines()
        for caret in carets:
            source = sources[sources.index(caret) - 1]
            assert source[caret.index("^") :].startswith("queue")
    assert govpass_lines(netns) == []  # -c never leaves anything behind


# -- the eBPF pre-filter ----------------------------------------------------------------------


def bpf_mounts_under_run() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        rows = [line.split() for line in f]
    return [r[4] for r in rows if r[4].startswith("/run/govpass") and "bpf" in r]


def test_auto_prefilter_with_iptables_nft_is_bpf_and_idempotent(netns: Netns) -> None:
    first = install(RuleSpec(), netns.runner, "iptables-nft")
    assert first.prefilter == "bpf", first.prefilter_reason
    once = {f: mangle_dump(netns, "iptables-nft", f) for f in ("ipv4", "ipv6")}
    second = install(RuleSpec(), netns.runner, "iptables-nft")
    assert second.prefilter == "bpf"
    twice = {f: mangle_dump(netns, "iptables-nft", f) for f in ("ipv4", "ipv6")}
    assert once == twice
    for family, dump in twice.items():
        bpf = [ln for ln in dump if "-m bpf --object-pinned" in ln]
        assert len(bpf) == 1 and bpf[0].split("--object-pinned ")[1].split()[0].endswith(
            f"-{family}"
        )
        assert not any("GOVPASS_POST" in ln or "connbytes" in ln for ln in dump)
    assert bpf_mounts_under_run() == []  # the pins went with the install
    remove(netns.runner)
    assert govpass_lines(netns) == []


def test_auto_prefilter_with_iptables_legacy_falls_back_to_conntrack(netns: Netns) -> None:
    result = install(RuleSpec(), netns.runner, "iptables-legacy")
    assert result.prefilter == "conntrack"
    assert "needs iptables-nft" in result.prefilter_reason
    assert "conntrack (" in result.prefilter_summary
    remove(netns.runner)


def test_bpf_prefilter_refused_with_iptables_legacy(netns: Netns) -> None:
    with pytest.raises(FirewallError, match=r"prefilter bpf: .*iptables-nft"):
        install(RuleSpec(prefilter="bpf"), netns.runner, "iptables-legacy")
    assert govpass_lines(netns) == []
