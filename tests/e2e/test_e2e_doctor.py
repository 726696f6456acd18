"""`govpass doctor` inside the lab's client namespace: real kernel, real
iptables. It reports what `run` would use, and leftover rules with their fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from e2e_support import govpass_cli, govpass_rule_lines
from govpass.lab import Lab


def doctor(lab: Lab, run_dir: Path, *flags: str) -> tuple[int, dict[str, dict[str, Any]]]:
    proc = govpass_cli(lab, "client", ["doctor", "--json", *flags], run_dir=run_dir)
    assert proc.stderr == "", proc.stderr
    checks = json.loads(proc.stdout)
    return proc.returncode, {c["name"]: c for c in checks}


def test_doctor_names_what_run_would_use(host_lab: Lab, tmp_path: Path) -> None:
    rc, checks = doctor(host_lab, tmp_path)
    assert rc == 0, checks
    assert checks["privileges"]["status"] == "ok"
    assert checks["nfqueue"]["status"] == "ok"
    assert checks["queues"]["detail"].startswith("queues 200..")
    assert "leave in the verdicts" in checks["packet loop"]["detail"]
    assert checks["firewall iptables-nft"]["detail"].endswith("(will be used)")
    assert checks["pre-filter"]["status"] == "ok"
    assert checks["pre-filter"]["detail"].startswith("bpf:")
    assert checks["installed rules"]["detail"] == "none installed"
    # The client namespace's default route leaves through its veth.
    offload = [name for name in checks if name.startswith("offload ")]
    assert offload and all(checks[n]["detail"].startswith("tso=") for n in offload), checks
    assert checks["backend nfqueue"]["detail"] == "usable"
    assert all(c["fix"] for c in checks.values() if c["status"] != "ok"), checks


def test_doctor_follows_the_flags(host_lab: Lab, tmp_path: Path) -> None:
    rc, checks = doctor(
        host_lab, tmp_path, "--prefilter", "conntrack", "--inject", "raw", "--queue-num", "300"
    )
    assert rc == 0, checks
    assert checks["pre-filter"]["detail"] == "conntrack (set by prefilter)"
    assert checks["packet loop"]["detail"].endswith("(inject raw)")
    assert checks["queues"]["detail"].startswith("queues 300..")


def test_doctor_finds_leftover_rules_and_names_the_fix(host_lab: Lab, tmp_path: Path) -> None:
    installed = govpass_cli(host_lab, "client", ["rules", "install", "--workers", "1"])
    assert installed.returncode == 0, installed.stderr
    try:
        rc, checks = doctor(host_lab, tmp_path)
        leftover = checks["installed rules"]
        assert leftover["status"] == "warn" and "no daemon runs" in leftover["detail"], leftover
        assert leftover["fix"] == "govpass rules remove"
        assert rc == 0  # a warning, not a failure
    finally:
        removed = govpass_cli(host_lab, "client", ["rules", "remove"])
    assert removed.returncode == 0, removed.stderr
    assert govpass_rule_lines(host_lab, "client") == []
    _, checks = doctor(host_lab, tmp_path)
    assert checks["installed rules"]["detail"] == "none installed"
