"""The checks behind `govpass doctor`, one by one, with the system's answers
replaced: each finding has a status and, when it is not ok, a fix. The real
command runs in the lab in tests/e2e/test_e2e_doctor.py."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from govpass import doctor
from govpass.backends import nfqueue
from govpass.config import Config


def test_root_is_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor.os, "geteuid", lambda: 0)
    assert doctor.check_privileges().status == "ok"


def test_two_capabilities_are_enough_and_missing_ones_are_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(doctor.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(doctor, "missing_capabilities", lambda: [])
    assert doctor.check_privileges().status == "ok"
    monkeypatch.setattr(doctor, "missing_capabilities", lambda: ["CAP_NET_RAW"])
    check = doctor.check_privileges()
    assert check.status == "fail" and "CAP_NET_RAW" in check.detail
    assert "govpass.service" in check.fix


@pytest.mark.parametrize(
    ("settings", "initial_ns", "expected"),
    [
        ({}, True, "leave in the verdicts"),
        ({}, False, "not in the initial user namespace"),
        ({"inject": "raw"}, True, "raw sockets (inject raw)"),
        ({"packet_loop": "python"}, True, "python (packet-loop python)"),
        ({"block_quic": "listed"}, True, "python (block-quic listed)"),
    ],
)
def test_packet_loop_says_how_segments_leave(
    monkeypatch: pytest.MonkeyPatch, settings: dict[str, str], initial_ns: bool, expected: str
) -> None:
    monkeypatch.setattr(nfqueue, "in_initial_user_namespace", lambda: initial_ns)
    check = doctor.check_packet_loop(Config(**settings))  # type: ignore[arg-type]
    assert check.status == "ok" and expected in check.detail, check


def test_initial_user_namespace_is_told_by_its_inode(tmp_path: Path) -> None:
    # Not the initial namespace's inode number, or no such file: False.
    other = tmp_path / "user"
    other.write_text("")
    assert not nfqueue.in_initial_user_namespace(str(other))
    assert not nfqueue.in_initial_user_namespace(str(tmp_path / "missing"))


def test_prefilter_set_to_conntrack_needs_nothing() -> None:
    check = doctor.check_prefilter(Config(prefilter="conntrack"), "iptables-legacy")
    assert check.status == "ok" and "conntrack" in check.detail


@pytest.mark.parametrize(("prefilter", "status"), [("auto", "warn"), ("bpf", "fail")])
def test_prefilter_without_iptables_nft_falls_back_or_fails(prefilter: str, status: str) -> None:
    check = doctor.check_prefilter(Config(prefilter=prefilter), "iptables-legacy")
    assert check.status == status
    assert "iptables-nft" in check.detail and "iptables-legacy" in check.detail
    assert "nf_tables" in check.fix


def test_prefilter_without_any_firewall_backend_says_so() -> None:
    check = doctor.check_prefilter(Config(), None)
    assert "None" not in check.detail and "no firewall backend is usable" in check.detail


def test_without_cap_net_admin_the_firewall_is_not_blamed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(doctor, "missing_capabilities", lambda: ["CAP_NET_ADMIN"])
    checks = doctor.check_firewall(Config())
    assert checks and all(c.detail == "not checked: needs root (or CAP_NET_ADMIN)" for c in checks)


def _fake_ethtool(tmp_path: Path, output: str, rc: int = 0) -> str:
    tool = tmp_path / "ethtool"
    tool.write_text(f"#!/bin/sh\ncat <<'END'\n{output}END\nexit {rc}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return str(tool)


def test_offload_on_is_a_warning_with_the_command_that_turns_it_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = (
        "Features for eth9:\n"
        "tcp-segmentation-offload: on\n"
        "generic-segmentation-offload: off [fixed]\n"
        "generic-receive-offload: on\n"
    )
    tool = _fake_ethtool(tmp_path, out)
    monkeypatch.setattr(doctor.shutil, "which", lambda name: tool)
    check = doctor.check_offload("eth9")
    assert check.status == "warn" and check.detail.startswith("tso=on gso=off gro=on")
    assert check.fix.startswith("ethtool -K eth9 tso off gro off")


def test_offload_off_is_ok_and_a_missing_ethtool_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = (
        "tcp-segmentation-offload: off\n"
        "generic-segmentation-offload: off\n"
        "generic-receive-offload: off\n"
    )
    tool = _fake_ethtool(tmp_path, out)
    monkeypatch.setattr(doctor.shutil, "which", lambda name: tool)
    assert doctor.check_offload("eth9").status == "ok"
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)
    check = doctor.check_offload("eth9")
    assert check.status == "warn" and check.fix == "apt install ethtool"


def test_a_probe_that_breaks_is_a_finding_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> doctor.Check:
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "check_nfqueue", broken)
    monkeypatch.setattr(doctor, "check_firewall", lambda config: [])
    monkeypatch.setattr(doctor, "check_interfaces", lambda config: [])
    monkeypatch.setattr(doctor, "default_interfaces", lambda: [])
    monkeypatch.setattr(doctor, "check_backends", lambda config: [])
    results = doctor.run_checks(Config())
    assert any(r.status == "warn" and "RuntimeError: boom" in r.detail for r in results)
    assert any(r.name == "packet loop" for r in results)


# ------------------------------------------------------------------ learned strategies


def _auto_config(tmp_path: Path, state: Path) -> Config:
    import json

    from govpass.config import load

    conf = tmp_path / "govpass.toml"
    conf.write_text(
        f"strategy-state = {json.dumps(str(state))}\n"
        '[[profile]]\nname = "ru"\nhosts = ["example"]\nstrategy = "auto"\n'
        '[[profile]]\nname = "rest"\n'
    )
    return load(file=conf, env={})


def test_strategies_are_shown_per_auto_profile_with_their_hosts(tmp_path: Path) -> None:
    import json

    state = tmp_path / "strat\u202eegies.json"  # a bidi override: shown escaped
    config = _auto_config(tmp_path, state)
    [none] = doctor.check_strategies(config)
    assert none.status == "ok" and "nothing learned yet" in none.detail
    hosts = {f"h{i}.example": {"strategy": "1"} for i in range(12)}
    hosts["c.example"] = {"strategy": "5", "unfixable_until": 4e9}
    state.write_text(
        json.dumps({"govpass": "strategies", "version": 1, "hosts": {}, "profiles": {"ru": hosts}})
    )
    [ru] = doctor.check_strategies(config)
    assert ru.name == "strategies profile ru" and ru.status == "ok"
    assert "13 host(s) learned, readable state file" in ru.detail
    assert "strat\\u202eegies.json" in ru.detail and "\u202e" not in ru.detail
    assert "1: h0.example, h1.example" in ru.detail and "and 2 more" in ru.detail
    assert "unfixable: c.example" in ru.detail


def test_an_unusable_state_file_is_a_warning_with_a_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "strategies.json"
    config = _auto_config(tmp_path, state)
    state.write_text('{"other": "tool"}')
    [bad] = doctor.check_strategies(config)
    assert bad.status == "warn" and "unusable" in bad.detail
    assert "govpass strategy clear" in bad.fix

    def denied(path: Path) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("govpass.strategy_learner.read_state", denied)
    [unreadable] = doctor.check_strategies(config)
    assert unreadable.status == "warn" and "not readable by this user" in unreadable.detail
    assert "as root" in unreadable.fix


def test_no_strategy_line_without_strategy_auto() -> None:
    assert doctor.check_strategies(Config()) == []
