"""Which firewall tool can carry the govpass rules on this machine, and why not.

Every probe loads the real rules (nft: ``nft -c``, a kernel-side dry run; iptables:
a spare chain that is deleted again), because a tool being installed says little:
the kernel may lack ``nft_queue``, ``xt_u32`` or the legacy xtables core.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from govpass.rules import iptables as ipt
from govpass.rules import nftables as nft
from govpass.rules.runner import CommandResult, Runner
from govpass.rules.spec import Family, RuleSpec

BackendName = Literal["nftables", "iptables-legacy", "iptables-nft"]
Variant = Literal["legacy", "nft"]
BACKENDS: tuple[BackendName, ...] = ("nftables", "iptables-legacy", "iptables-nft")
# What a user may ask for: a backend, or "iptables": the variant the plain
# `iptables` command uses (what the admin's other tools see), nft where unknown.
Preference = BackendName | Literal["iptables"]
_PERMISSION = re.compile(r"permission denied|operation not permitted|must be root", re.I)


@dataclass(frozen=True)
class BackendStatus:
    """Whether one backend can be used; ``reason`` says why (or why not) in one line."""

    name: BackendName
    usable: bool
    reason: str
    v4: str | None = None  # iptables binary for IPv4, when the backend is iptables
    v6: str | None = None

    def binary(self, family: Family) -> str | None:
        return self.v4 if family == "ipv4" else self.v6


@dataclass(frozen=True)
class Detection:
    chosen: BackendStatus | None
    statuses: tuple[BackendStatus, ...]

    def summary(self) -> str:
        return "; ".join(f"{s.name}: {s.reason}" for s in self.statuses)


def is_permission_error(result: CommandResult) -> bool:
    return bool(_PERMISSION.search(result.stderr))


def iptables_version(binary: str, runner: Runner) -> tuple[Variant | None, str]:
    """(variant, version line) from ``binary -V``; variant None when it cannot run."""
    if runner.which(binary) is None:
        return None, f"{binary} not found in PATH"
    res = runner.run([binary, "-V"], check=False)
    text = (res.stdout or res.stderr).strip()
    line = text.splitlines()[0] if text else ""
    if not res.ok:
        return None, res.error_line()
    if "(nf_tables)" in line:
        return "nft", line
    # iptables < 1.8 has only the legacy backend and prints no suffix.
    return "legacy", line


def default_iptables_variant(runner: Runner) -> Variant | None:
    """The backend the plain `iptables` command uses (what the admin's other tools see)."""
    variant, _ = iptables_version("iptables", runner)
    return variant


def resolve_binary(family: Family, variant: Variant, runner: Runner) -> tuple[str | None, str]:
    """The binary that drives `variant` for `family`: `iptables-nft`, else a matching `iptables`."""
    candidates = (ipt.binary_for(family, variant), ipt.binary_for(family))
    for candidate in candidates:
        found, line = iptables_version(candidate, runner)
        if found == variant:
            return candidate, line
    base = ipt.binary_for(family)
    if all(runner.which(c) is None for c in candidates):
        return None, f"neither {base}-{variant} nor {base} found in PATH"
    return None, f"neither {base}-{variant} nor {base} drives the {variant} backend"


def nft_error_summary(stderr: str) -> str:
    """Condense nft's multi-line diagnostics into: message + offending statement."""
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        if "Error:" not in line:
            continue
        message = line.split("Error:", 1)[1].strip()
        source = lines[i + 1] if i + 1 < len(lines) else ""
        caret = lines[i + 2] if i + 2 < len(lines) else ""
        start = caret.find("^")
        if start >= 0:
            stmt = source[start:].strip()
            return f"{message} at `{stmt}`"
        return message
    return stderr.strip().replace("\n", " | ") or "no diagnostics"


def probe_nftables(spec: RuleSpec, runner: Runner) -> BackendStatus:
    if runner.which("nft") is None:
        return BackendStatus("nftables", False, "nft not found in PATH")
    script = nft.render_install(spec)
    res = runner.run(["nft", "-c", "-f", "-"], input_text=script, check=False)
    if res.ok:
        return BackendStatus("nftables", True, "kernel accepted the ruleset (nft -c)")
    summary = nft_error_summary(res.stderr)
    if "queue" in summary and "No such file or directory" in summary:
        return BackendStatus(
            "nftables", False, f"kernel has no nft_queue support (nft -c: {summary})"
        )
    return BackendStatus("nftables", False, f"kernel rejected the ruleset (nft -c: {summary})")


def _probe_family(spec: RuleSpec, family: Family, binary: str, runner: Runner) -> str | None:
    """Load every rule shape into a spare chain; return the failure line or None."""
    load, unload = ipt.plan_probe(spec, family, binary)
    for argv in unload:  # a stale probe chain from an interrupted run
        runner.run(argv, check=False)
    failure = None
    for argv in load:
        res = runner.run(argv, check=False)
        if not res.ok:
            failure = res.error_line()
            break
    for argv in unload:
        runner.run(argv, check=False)
    return failure


def probe_iptables(spec: RuleSpec, variant: Variant, runner: Runner) -> BackendStatus:
    name: BackendName = "iptables-legacy" if variant == "legacy" else "iptables-nft"
    binaries: dict[Family, str] = {}
    notes: list[str] = []
    for family in spec.families:
        binary, line = resolve_binary(family, variant, runner)
        if binary is None:
            notes.append(f"{family}: {line}")
            continue
        failure = _probe_family(spec, family, binary, runner)
        if failure is None:
            binaries[family] = binary
            if family == "ipv4":
                notes.append(line)
        else:
            notes.append(f"{family}: {failure}")
    usable = bool(binaries)
    if usable and len(binaries) < len(spec.families):
        missing = ", ".join(f for f in spec.families if f not in binaries)
        notes.append(f"only {', '.join(binaries)} usable, {missing} skipped")
    reason = "; ".join(notes) if notes else "probe passed"
    return BackendStatus(name, usable, reason, binaries.get("ipv4"), binaries.get("ipv6"))


def detect(spec: RuleSpec, runner: Runner, prefer: Preference | None = None) -> Detection:
    """Probe backends in preference order and stop at the first usable one.

    Order: ``prefer`` if given (only that one), else nftables, then the iptables
    variant the plain `iptables` command uses, then the other variant.
    """
    if prefer is not None:
        if prefer == "nftables":
            status = probe_nftables(spec, runner)
        else:
            variant: Variant
            if prefer == "iptables":
                variant = default_iptables_variant(runner) or "nft"
            else:
                variant = "legacy" if prefer == "iptables-legacy" else "nft"
            status = probe_iptables(spec, variant, runner)
        return Detection(status if status.usable else None, (status,))

    statuses: list[BackendStatus] = []
    nft_status = probe_nftables(spec, runner)
    statuses.append(nft_status)
    if nft_status.usable:
        return Detection(nft_status, tuple(statuses))
    first = default_iptables_variant(runner) or "nft"
    order: tuple[Variant, Variant] = (first, "legacy" if first == "nft" else "nft")
    for variant in order:
        status = probe_iptables(spec, variant, runner)
        statuses.append(status)
        if status.usable:
            return Detection(status, tuple(statuses))
    return Detection(None, tuple(statuses))


def unavailable_reason(name: BackendName, spec: RuleSpec, runner: Runner) -> str | None:
    """None when `name` can carry the rules here, else one line saying why not."""
    status = detect(spec, runner, prefer=name).statuses[0]
    return None if status.usable else status.reason
