"""Install, remove and show the govpass interception rules.

* install: picks a backend (see :mod:`govpass.rules.detect`), removes whatever an
  earlier run left behind, then applies the plan.  nftables applies in one
  transaction; iptables runs command by command and on a failure removes what
  it added before raising.
* remove: finds govpass state by name (table ``inet govpass``, chains
  ``GOVPASS*`` in ``mangle``) in every backend present, so leftovers of a crashed
  run or of another backend are removed too.  Removing nothing is success.
* show: the same inventory, as text.

The pre-filter (``spec.prefilter``): with iptables-nft, "auto" and "bpf" load
the eBPF program of :mod:`govpass.bpf.prefilter`, probe it and install the
rules that use it; "auto" falls back to the conntrack rules, with the reason
in :attr:`InstallResult.prefilter_reason`, when that does not work here.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace

from govpass.errors import FirewallError, RulesStillPresent
from govpass.rules import iptables as ipt
from govpass.rules import nftables as nft
from govpass.rules import tables
from govpass.rules.detect import (
    BackendName,
    BackendStatus,
    Detection,
    Preference,
    default_iptables_variant,
    detect,
    is_permission_error,
    nft_error_summary,
    probe_iptables,
)
from govpass.rules.runner import CommandResult, Runner
from govpass.rules.spec import Family, RuleSpec

FAMILIES: tuple[Family, ...] = ("ipv4", "ipv6")


@dataclass(frozen=True)
class InstallResult:
    backend: BackendName
    reason: str  # why this backend: its probe result and why better ones were skipped
    families: tuple[Family, ...]
    commands: tuple[tuple[str, ...], ...]  # what was executed, in order
    nft_script: str | None = None
    prefilter: str = "conntrack"  # "bpf" or "conntrack": what the rules use
    prefilter_reason: str = ""  # why conntrack when bpf was allowed

    @property
    def prefilter_summary(self) -> str:
        """One phrase: which pre-filter the rules use, and why not bpf."""
        if self.prefilter == "bpf":
            return "bpf (eBPF program, no connection tracking)"
        if self.prefilter_reason:
            return f"conntrack ({self.prefilter_reason})"
        return "conntrack"


@dataclass(frozen=True)
class Installed:
    """govpass state found in one place (one backend, one family)."""

    where: str  # "nftables" or e.g. "iptables-nft ipv4"
    binary: str  # command that manages it: "nft" or the iptables binary
    lines: tuple[str, ...]  # human-readable rules
    state: ipt.MangleState | None = None  # iptables only


@dataclass(frozen=True)
class RemoveResult:
    removed: tuple[str, ...]  # the `where` of each place that had govpass state
    commands: tuple[tuple[str, ...], ...]
    not_inspected: str = ""  # places this user may not list, and why ("" when none)

    @property
    def nothing_installed(self) -> bool:
        return not self.removed


def _raise_if_denied(result: CommandResult) -> None:
    if not result.ok and is_permission_error(result):
        raise FirewallError(result.error_line())


def _iptables_binaries(runner: Runner) -> list[tuple[str, Family, str]]:
    """(label, family, binary) for every iptables flavour installed."""
    found: list[tuple[str, Family, str]] = []
    for family in FAMILIES:
        variants = [v for v in ("legacy", "nft") if runner.which(ipt.binary_for(family, v))]
        for variant in variants:
            found.append((f"iptables-{variant} {family}", family, ipt.binary_for(family, variant)))
        if not variants and runner.which(ipt.binary_for(family)):
            found.append((f"iptables {family}", family, ipt.binary_for(family)))
    return found


def _nft_inventory(runner: Runner) -> Installed | None:
    if runner.which("nft") is None:
        return None
    tables = runner.run(["nft", "list", "tables"], check=False)
    _raise_if_denied(tables)
    if not tables.ok or f"table {nft.TABLE}" not in tables.stdout.splitlines():
        return None
    # Stateless: without the counters' values, so two listings compare equal while
    # the rules are the same (the daemon compares them to notice changes by hand).
    listing = runner.run(["nft", "-s", "list", "table", nft.TABLE_FAMILY, nft.TABLE_NAME])
    return Installed("nftables", "nft", tuple(listing.stdout.rstrip().splitlines()))


# iptables-legacy binaries this process installed rules with: their mangle table exists
# (govpass made it), so listing it by name creates nothing.
_legacy_in_use: set[str] = set()

# Why an unprivileged daemon does not see the legacy tables: listing them (without -t)
# reads /proc/net/ip_tables_names, which is root's only (mode 0440), while the rules
# themselves need just CAP_NET_ADMIN.
_LEGACY_UNREADABLE = (
    "not inspected for leftovers: listing the legacy tables needs root "
    "(/proc/net/ip_tables_names), and neither these rules nor the plain iptables command "
    "use iptables-legacy"
)


def _legacy_by_name(binary: str, runner: Runner) -> bool:
    """Whether a legacy mangle table may be listed by name (which creates it when absent):
    only where it is ours or iptables-legacy is the system's own firewall anyway."""
    return binary in _legacy_in_use or default_iptables_variant(runner) == "legacy"


def _iptables_inventory(
    label: str, binary: str, runner: Runner, notes: list[str]
) -> Installed | None:
    # Without -t, iptables-save lists only tables that already exist, so looking
    # does not create (and hook) an empty legacy mangle table.
    res = runner.run([f"{binary}-save"], check=False)
    if not res.ok and is_permission_error(res) and "legacy" in label:
        if not _legacy_by_name(binary, runner):
            notes.append(label)
            return None
        res = runner.run([f"{binary}-save", "-t", "mangle"], check=False)
    _raise_if_denied(res)
    if not res.ok:
        return None  # this backend cannot run here, so nothing of ours can be in it
    state = ipt.parse_save(res.stdout)
    if state.empty:
        return None
    return Installed(label, binary, tuple(ipt.describe(state)), state)


def _inventory(runner: Runner, notes: list[str]) -> list[Installed]:
    found: list[Installed] = []
    nft_state = _nft_inventory(runner)
    if nft_state:
        found.append(nft_state)
    for label, _family, binary in _iptables_binaries(runner):
        item = _iptables_inventory(label, binary, runner, notes)
        if item:
            found.append(item)
    return found


def inventory(runner: Runner | None = None) -> list[Installed]:
    """Everything govpass-named that is installed now, in any backend this user may list."""
    return _inventory(runner or Runner(), [])


def show(runner: Runner | None = None) -> str:
    items = inventory(runner)
    if not items:
        return "govpass: no interception rules installed\n"
    blocks = []
    for item in items:
        title = item.where if item.where == "nftables" else f"{item.where} (table mangle)"
        blocks.append("\n".join([f"{title}:", *(f"  {line}" for line in item.lines)]))
    return "\n".join(blocks) + "\n"


def _remove_item(item: Installed, runner: Runner) -> list[tuple[str, ...]]:
    if item.state is None:  # the nft table: one transaction removes all of it
        argv = ["nft", "-f", "-"]
        runner.run(argv, input_text=nft.render_remove())
        return [tuple(argv)]
    cmds = ipt.plan_remove(item.state, item.binary)
    for argv in cmds:
        runner.run(argv)
    return [tuple(c) for c in cmds]


def remove(runner: Runner | None = None) -> RemoveResult:
    """Remove all govpass rules from every backend; succeed when there are none.
    Then the tables iptables-nft made for them go too (:mod:`govpass.rules.tables`)."""
    runner = runner or Runner()
    result = _remove_rules(runner)
    tables.release(runner)
    return result


def _remove_rules(runner: Runner) -> RemoveResult:
    removed: list[str] = []
    commands: list[tuple[str, ...]] = []
    notes: list[str] = []
    for item in _inventory(runner, notes):
        commands += _remove_item(item, runner)
        removed.append(item.where)
    leftover = _inventory(runner, [])
    if leftover:
        where = ", ".join(item.where for item in leftover)
        raise RulesStillPresent(f"govpass rules still present after remove in: {where}")
    unseen = f"{', '.join(notes)} {_LEGACY_UNREADABLE}" if notes else ""
    return RemoveResult(tuple(removed), tuple(commands), unseen)


def _install_nft(spec: RuleSpec, runner: Runner) -> tuple[list[tuple[str, ...]], str]:
    script = nft.render_install(spec)
    argv = ["nft", "-f", "-"]
    res = runner.run(argv, input_text=script, check=False)
    if not res.ok:
        raise FirewallError(
            f"`nft -f -` failed (exit {res.returncode}): {nft_error_summary(res.stderr)}"
        )
    return [tuple(argv)], script


def _install_iptables(
    spec: RuleSpec, status: BackendStatus, runner: Runner
) -> tuple[list[tuple[str, ...]], tuple[Family, ...]]:
    executed: list[tuple[str, ...]] = []
    families: list[Family] = []
    for family in spec.families:
        binary = status.binary(family)
        if binary is None:
            continue
        for argv in ipt.plan_install(spec, family, binary):
            res = runner.run(argv, check=False)
            if not res.ok:
                try:
                    remove(runner)
                    undo = "rolled back"
                except FirewallError as exc:
                    undo = f"rollback also failed: {exc}"
                raise FirewallError(f"{res.error_line()}; {undo}")
            executed.append(tuple(argv))
        families.append(family)
    return executed, tuple(families)


def render_plan(spec: RuleSpec, backend: BackendName) -> str:
    """What `install` would apply with `backend`, as text (for dry runs); pure.

    With the eBPF pre-filter allowed and iptables-nft, the program's path reads
    ``<pinned at install>-<family>``: it is pinned only while installing."""
    if backend == "nftables":
        return nft.render_install(replace(spec, prefilter_pin=""))
    if spec.prefilter != "conntrack" and backend == "iptables-nft":
        spec = replace(spec, prefilter_pin="<pinned at install>")
    else:
        spec = replace(spec, prefilter_pin="")
    variant = backend.removeprefix("iptables-")
    lines = [
        shlex.join(argv)
        for family in spec.families
        for argv in ipt.plan_install(spec, family, ipt.binary_for(family, variant))
    ]
    return "\n".join(lines) + "\n"


def _install_with_bpf(
    spec: RuleSpec, runner: Runner
) -> tuple[list[tuple[str, ...]], tuple[Family, ...]] | str:
    """Install iptables-nft rules that use the eBPF pre-filter; on failure, the
    reason (nothing installed)."""
    from govpass.bpf import prefilter
    from govpass.bpf.syscall import BpfError

    try:
        age_ns = spec.prefilter_age_ms * 1_000_000
        with prefilter.pinned(spec.families, age_ns, spec.kernel_split) as pin:
            bpf_spec = replace(spec, prefilter="bpf", prefilter_pin=pin)
            status = probe_iptables(bpf_spec, "nft", runner)
            if not status.usable:
                return f"iptables-nft refused the bpf match ({status.reason})"
            _remove_rules(runner)
            return _install_iptables(bpf_spec, status, runner)
    except BpfError as e:
        return f"cannot load the eBPF program: {e}"
    except OSError as e:
        return f"cannot pin the eBPF program: {e.strerror or e}"


def install(
    spec: RuleSpec, runner: Runner | None = None, backend: Preference | None = None
) -> InstallResult:
    """Install the rules for `spec`; installing again replaces, never duplicates."""
    runner = runner or Runner()
    tables.claim(spec.families, runner)  # before the probes, which create tables too
    try:
        return _install(spec, runner, backend)
    finally:
        tables.release(runner)  # those the chosen backend did not fill (or a failure left)


def preflight(
    spec: RuleSpec, runner: Runner | None = None, backend: Preference | None = None
) -> None:
    """Raises what :func:`install` would raise when no backend can carry `spec`,
    without installing anything: the daemon asks before it binds its queues, so
    that this is the first and only line it prints."""
    runner = runner or Runner()
    tables.claim(spec.families, runner)  # the probes create tables too
    try:
        _chosen(detect(spec, runner, prefer=backend), backend)
    finally:
        tables.release(runner)


def _chosen(detection: Detection, backend: Preference | None) -> BackendStatus:
    """The backend that carries the rules, or one line saying why there is none."""
    if detection.chosen is not None:
        return detection.chosen
    if backend is not None:  # the user named it: the fix is another value, not a package
        raise FirewallError(
            f"firewall {backend} cannot carry the rules here ({detection.summary()}); "
            "accepted: auto (the first backend that works), nftables, iptables, none"
        )
    raise FirewallError(
        f"no usable firewall backend ({detection.summary()}); install iptables "
        "(apt-get install iptables) or nftables"
    )


def _install(spec: RuleSpec, runner: Runner, backend: Preference | None) -> InstallResult:
    spec = replace(spec, prefilter_pin="")
    detection = detect(spec, runner, prefer=backend)
    chosen = _chosen(detection, backend)
    skipped = [s for s in detection.statuses if s is not chosen]
    reason = chosen.reason
    if skipped:
        reason += " (skipped " + "; ".join(f"{s.name}: {s.reason}" for s in skipped) + ")"

    why_not_bpf = ""
    if spec.prefilter != "conntrack":
        if chosen.name == "iptables-nft":
            outcome = _install_with_bpf(spec, runner)
            if not isinstance(outcome, str):
                commands, families = outcome
                return InstallResult(chosen.name, reason, families, tuple(commands), None, "bpf")
            why_not_bpf = outcome
        else:
            why_not_bpf = f"the eBPF pre-filter needs iptables-nft, not {chosen.name}"
        if spec.prefilter == "bpf":
            raise FirewallError(f"prefilter bpf: {why_not_bpf}")
        spec = replace(spec, prefilter="conntrack")

    if chosen.name == "iptables-legacy":
        _legacy_in_use.update(b for b in (chosen.v4, chosen.v6) if b)
    # Leftovers of an earlier or crashed run, in any backend this user may list.
    unseen = _remove_rules(runner).not_inspected
    if unseen:
        reason += f"; {unseen}"
    if chosen.name == "nftables":
        commands, script = _install_nft(spec, runner)
        return InstallResult(
            "nftables", reason, spec.families, tuple(commands), script, "conntrack", why_not_bpf
        )
    commands_ipt, families = _install_iptables(spec, chosen, runner)
    return InstallResult(
        chosen.name, reason, families, tuple(commands_ipt), None, "conntrack", why_not_bpf
    )
