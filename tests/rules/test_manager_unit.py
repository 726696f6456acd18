"""Backend choice and manager control flow against a scripted fake runner (no root)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from govpass.errors import FirewallError
from govpass.rules import RuleSpec, Runner, detect, install, remove, render_plan, show
from govpass.rules.detect import nft_error_summary
from govpass.rules.runner import CommandResult

NFT_NO_QUEUE = """\
/dev/stdin:15:38-42: Error: Could not process rule: No such file or directory
\t\tct mark & 0x20000000 == 0x20000000 queue num 200 bypass
\t\t                                   ^^^^^
"""

Handler = Callable[[tuple[str, ...], str | None], tuple[int, str, str] | None]


class FakeRunner(Runner):
    """Answers commands from a list of handlers; records everything it was asked."""

    def __init__(self, programs: set[str], handlers: Sequence[Handler] = ()) -> None:
        super().__init__()
        self.programs = programs
        self.handlers = list(handlers)
        self.calls: list[tuple[str, ...]] = []
        self.inputs: list[str | None] = []

    def which(self, program: str) -> str | None:
        return f"/usr/sbin/{program}" if program in self.programs else None

    def run(
        self, argv: Sequence[str], *, input_text: str | None = None, check: bool = True
    ) -> CommandResult:
        call = tuple(argv)
        self.calls.append(call)
        self.inputs.append(input_text)
        answer = (0, "", "")
        for handler in self.handlers:
            got = handler(call, input_text)
            if got is not None:
                answer = got
                break
        result = CommandResult(call, *answer)
        if check and not result.ok:
            raise FirewallError(result.error_line())
        return result


def version(call: tuple[str, ...], _input: str | None) -> tuple[int, str, str] | None:
    if call[-1] == "-V":
        kind = "legacy" if "legacy" in call[0] else "nf_tables"
        return 0, f"{call[0]} v1.8.9 ({kind})\n", ""
    return None


def nft_without_queue(call: tuple[str, ...], _input: str | None) -> tuple[int, str, str] | None:
    if call[:2] == ("nft", "-c"):
        return 1, "", NFT_NO_QUEUE
    return None


ALL = {"nft", "iptables", "ip6tables", "iptables-nft", "ip6tables-nft", "iptables-legacy",
       "ip6tables-legacy"}  # fmt: skip


def test_nft_error_summary() -> None:
    assert nft_error_summary(NFT_NO_QUEUE) == (
        "Could not process rule: No such file or directory at `queue num 200 bypass`"
    )
    assert nft_error_summary("") == "no diagnostics"


def test_prefers_nft_when_kernel_accepts_it() -> None:
    runner = FakeRunner(ALL, [version])
    result = install(RuleSpec(), runner)
    assert result.backend == "nftables"
    assert result.nft_script is not None
    assert ("nft", "-f", "-") in runner.calls
    applied = runner.inputs[runner.calls.index(("nft", "-f", "-"))]
    assert applied is not None and applied.startswith("table inet govpass\ndelete table")
    # the probe is a dry run (-c) of exactly the script that is then applied
    assert runner.inputs[runner.calls.index(("nft", "-c", "-f", "-"))] == applied
    assert not any(c[0].startswith("ip") and "-N" in c for c in runner.calls)


def test_falls_back_to_system_iptables_variant() -> None:
    runner = FakeRunner(ALL, [version, nft_without_queue])
    detection = detect(RuleSpec(), runner)
    assert detection.chosen is not None
    assert detection.chosen.name == "iptables-nft"
    assert (detection.chosen.v4, detection.chosen.v6) == ("iptables-nft", "ip6tables-nft")
    assert "nft_queue" in detection.statuses[0].reason
    result = install(RuleSpec(), runner)
    assert result.backend == "iptables-nft"
    assert "skipped nftables: kernel has no nft_queue support" in result.reason


def test_legacy_default_and_legacy_broken_goes_to_nft_variant() -> None:
    def legacy_default(call: tuple[str, ...], _i: str | None) -> tuple[int, str, str] | None:
        if call == ("iptables", "-V"):
            return 0, "iptables v1.8.9 (legacy)\n", ""
        return None

    def legacy_kernel_missing(call: tuple[str, ...], _i: str | None) -> tuple[int, str, str] | None:
        if call[0].endswith("-legacy") and "-N" in call:
            return 3, "", "iptables v1.8.9 (legacy): can't initialize iptables table `mangle'\n"
        return None

    runner = FakeRunner(ALL, [legacy_default, version, nft_without_queue, legacy_kernel_missing])
    detection = detect(RuleSpec(), runner)
    assert [s.name for s in detection.statuses] == ["nftables", "iptables-legacy", "iptables-nft"]
    assert detection.chosen is not None and detection.chosen.name == "iptables-nft"
    assert "can't initialize" in detection.statuses[1].reason


def test_no_backend_at_all() -> None:
    runner = FakeRunner(set())
    with pytest.raises(FirewallError, match="no usable firewall backend") as err:
        install(RuleSpec(), runner)
    assert "nft not found in PATH" in str(err.value)
    assert "\n" not in str(err.value)


def test_ipv6_unusable_degrades_to_ipv4() -> None:
    def no_v6(call: tuple[str, ...], _i: str | None) -> tuple[int, str, str] | None:
        if call[0].startswith("ip6tables") and "-N" in call:
            return 3, "", "ip6tables: can't initialize ip6tables table `mangle'\n"
        return None

    runner = FakeRunner(ALL, [version, nft_without_queue, no_v6])
    result = install(RuleSpec(), runner, "iptables-nft")
    assert result.families == ("ipv4",)
    assert "ipv6 skipped" in result.reason
    assert not any(c[0] == "ip6tables-nft" and "-I" in c for c in runner.calls)


def test_plain_iptables_binary_when_no_variant_names() -> None:
    runner = FakeRunner({"iptables", "ip6tables"}, [version])
    result = install(RuleSpec(), runner, "iptables-nft")
    assert {c[0] for c in runner.calls if "-I" in c} == {"iptables", "ip6tables"}
    assert result.backend == "iptables-nft"


def test_install_failure_message_and_rollback_attempt() -> None:
    def fail_jump(call: tuple[str, ...], _i: str | None) -> tuple[int, str, str] | None:
        if "-I" in call and "OUTPUT" in call and call[0] == "iptables-nft":
            return 1, "", "iptables: No chain/target/match by that name.\n"
        return None

    runner = FakeRunner(ALL, [version, nft_without_queue, fail_jump])
    with pytest.raises(FirewallError) as err:
        install(RuleSpec(), runner, "iptables-nft")
    msg = str(err.value)
    assert msg.startswith("`iptables-nft -w -t mangle -I OUTPUT 1 -p tcp")
    assert "No chain/target/match by that name." in msg and msg.endswith("rolled back")
    after = runner.calls[runner.calls.index(next(c for c in runner.calls if fail_jump(c, None))) :]
    assert any(c[0].endswith("-save") for c in after)  # rollback looked for what to undo


def test_permission_denied_is_an_error_not_nothing_installed() -> None:
    def denied(call: tuple[str, ...], _i: str | None) -> tuple[int, str, str] | None:
        if call[0].endswith("-save") or call[:2] == ("nft", "list"):
            return (
                1,
                "",
                "Could not fetch rule set generation id: Permission denied (you must be root)",
            )
        return None

    runner = FakeRunner(ALL, [denied])
    with pytest.raises(FirewallError, match="Permission denied"):
        remove(runner)
    with pytest.raises(FirewallError, match="Permission denied"):
        show(runner)


def test_remove_deletes_found_state_in_each_backend() -> None:
    save = "*mangle\n:GOVPASS - [0:0]\n-A OUTPUT -j GOVPASS\nCOMMIT\n"
    state = {"removed": False}

    def world(call: tuple[str, ...], _i: str | None) -> tuple[int, str, str] | None:
        if call == ("iptables-legacy-save",):
            return 0, "" if state["removed"] else save, ""
        if call[0] == "iptables-legacy" and "-X" in call:
            state["removed"] = True
        if call == ("nft", "list", "tables"):
            return 0, "table ip filter\n", ""
        return None

    runner = FakeRunner(ALL, [world])
    result = remove(runner)
    assert result.removed == ("iptables-legacy ipv4",)
    assert result.commands == (
        ("iptables-legacy", "-w", "-t", "mangle", "-D", "OUTPUT", "-j", "GOVPASS"),
        ("iptables-legacy", "-w", "-t", "mangle", "-F", "GOVPASS"),
        ("iptables-legacy", "-w", "-t", "mangle", "-X", "GOVPASS"),
    )


def test_render_plan_is_pure_text() -> None:
    text = render_plan(RuleSpec(), "iptables-legacy")
    lines = text.splitlines()
    assert lines[0] == "iptables-legacy -w -t mangle -N GOVPASS"
    assert sum(ln.startswith("ip6tables-legacy ") for ln in lines) == len(lines) // 2
    assert "'4&0x1FFF=0&&" in text  # shell-quoted u32 expression
    assert render_plan(RuleSpec(), "nftables").startswith("table inet govpass\n")


@pytest.mark.parametrize(
    ("plain", "chosen"), [("legacy", "iptables-legacy"), ("nf_tables", "iptables-nft")]
)
def test_firewall_iptables_means_the_variant_the_plain_command_uses(
    plain: str, chosen: str
) -> None:
    def plain_version(call: tuple[str, ...], _i: str | None) -> tuple[int, str, str] | None:
        if call == ("iptables", "-V"):
            return 0, f"iptables v1.8.9 ({plain})\n", ""
        return None

    runner = FakeRunner(ALL, [plain_version, version])
    detection = detect(RuleSpec(), runner, prefer="iptables")
    assert [s.name for s in detection.statuses] == [chosen]
    assert detection.chosen is not None and detection.chosen.name == chosen
