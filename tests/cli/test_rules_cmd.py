"""`govpass rules remove`: what it prints (the manager's result faked; no root)."""

from __future__ import annotations

import pytest
from govpass import instance, rules
from govpass.cli import app, rules_cmd
from govpass.errors import RulesStillPresent
from govpass.rules.manager import RemoveResult
from typer.testing import CliRunner

NOTE = "iptables-legacy ipv4 not inspected for leftovers: listing needs root"


@pytest.fixture
def removing(monkeypatch: pytest.MonkeyPatch) -> list[RemoveResult]:
    results: list[RemoveResult] = []
    monkeypatch.setattr(rules_cmd, "_need_root", lambda: None)
    monkeypatch.setattr(instance, "refuse_if_running", lambda _action, _force: None)
    monkeypatch.setattr(rules, "remove", lambda: results.pop())
    return results


@pytest.mark.parametrize(
    ("removed", "first"),
    [((), "nothing installed"), (("nftables",), "removed: nftables")],
)
def test_remove_says_what_it_could_not_inspect_in_one_line(
    removing: list[RemoveResult], removed: tuple[str, ...], first: str
) -> None:
    removing.append(RemoveResult(removed, (), NOTE))
    out = CliRunner().invoke(app, ["rules", "remove"])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines() == [first, f"note: {NOTE}"]


def test_remove_prints_no_note_when_everything_was_inspected(
    removing: list[RemoveResult],
) -> None:
    removing.append(RemoveResult(("nftables",), ()))
    out = CliRunner().invoke(app, ["rules", "remove"])
    assert out.output.splitlines() == ["removed: nftables"]


def _put_back() -> RemoveResult:
    raise RulesStillPresent("govpass rules still present after remove in: iptables-nft ipv4")


def test_forced_remove_says_a_running_daemon_put_its_rules_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rules_cmd, "_need_root", lambda: None)
    monkeypatch.setattr(instance, "refuse_if_running", lambda _a, _f: instance.Holder(4242, 0))
    monkeypatch.setattr(rules, "remove", _put_back)
    out = CliRunner().invoke(app, ["rules", "remove", "--force"])
    assert out.exit_code == 0, out.output
    assert len(out.output.splitlines()) == 1
    assert "daemon (pid 4242) put its rules back" in out.output


def test_rules_still_there_without_a_daemon_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules_cmd, "_need_root", lambda: None)
    monkeypatch.setattr(instance, "refuse_if_running", lambda _a, _f: None)
    monkeypatch.setattr(rules, "remove", _put_back)
    out = CliRunner().invoke(app, ["rules", "remove"])
    assert isinstance(out.exception, RulesStillPresent)  # the CLI's one error line
