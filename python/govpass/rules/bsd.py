"""FreeBSD/OpenBSD interception rules (ipfw, pf) that feed a divert(4) socket,
planned as data (pure functions) plus small executors that take a Runner.

What the BSD kernels let us filter is much coarser than Linux:

ipfw (the FreeBSD default) has no per-connection packet counter (no
``connbytes``) and cannot look into the payload (no ``u32``), so it cannot pick
"the first data packets of a flow" or "a payload starting 16 03 .. .. .. 01".
The rules divert, per configured port::

    out, TCP to PORTS, not diverted, SYN clear, 1+ payload bytes  -> divert
    out, TCP to PORTS, not diverted, FIN set                      -> divert
    out, TCP to PORTS, not diverted, RST set                      -> divert

so SYNs, pure ACKs, everything inbound and everything govpass re-injected stay in
the kernel, but every outbound payload packet of a TLS connection (uploads
included) crosses user space once; the engine passes those at once. All rules
share one rule number, so removing them is one ``ipfw delete N``; govpass refuses
to touch that number when it holds rules that are not its own.

Re-injected packets carry the divert tag, which ``not diverted`` skips, and the
backend re-injects with the sockaddr it read, whose port is the rule number:
ipfw resumes after that rule. Two independent guards against loops.

pf can only divert a whole state: ``pass out ... divert-to``
(FreeBSD) / ``divert-packet`` (OpenBSD) creates a state, and every packet that
later matches it, in both directions, is diverted. Stateless variants would
need a blanket ``pass in ... from port 443 no state``, which opens the firewall,
so they are not offered. pf tags cannot mark re-injected packets (the packet
leaves the kernel and comes back as a new mbuf without tags), so loop avoidance
is the kernel's: OpenBSD re-injects past pf; FreeBSD pf has to recognise the
re-injected packet itself, which the zapret authors report as broken. The
backend therefore stops (and removes the rules) when it sees its own packets
come back. The only tag used here marks excluded interfaces.

The rules live in an anchor (default ``govpass``); the main ruleset must call it
(``anchor "govpass"`` in pf.conf). govpass never edits the main ruleset.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from govpass.errors import FirewallError
from govpass.rules.runner import CommandResult, Runner
from govpass.rules.spec import RuleSpecError, check_scope

BsdFirewall = Literal["ipfw", "pf"]
PfFlavor = Literal["freebsd", "openbsd"]
Mode = Literal["host", "router"]
Argv = list[str]

DEFAULT_DIVERT_PORT = 4430
DEFAULT_IPFW_RULE = 100
DEFAULT_PF_ANCHOR = "govpass"
PF_LABEL = "govpass"
PF_SKIP_TAG = "GOVPASS_SKIP"
LOOPBACK = "lo0"
IPFW_MAX_RULE = 65534  # 65535 is the default rule
MAX_PORTS = 32

# BSD interface names (em0, igb0.100, vtnet0, lagg0) and OpenBSD groups (egress).
_IFNAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,14}$")
# `ipfw list N` when nothing has that number (wording differs between releases).
_NO_RULE = re.compile(r"does not exist|no (such )?rules?\b", re.I)
_ANCHOR = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$")


@dataclass(frozen=True)
class BsdRuleSpec:
    """What to divert and where. Validated at construction, like RuleSpec."""

    divert_port: int = DEFAULT_DIVERT_PORT
    ports: tuple[int, ...] = (443,)
    mode: Mode = "host"
    interfaces: tuple[str, ...] = ()
    exclude_interfaces: tuple[str, ...] = ()
    ipv4: bool = True
    ipv6: bool = True
    ipfw_rule: int = DEFAULT_IPFW_RULE
    pf_anchor: str = DEFAULT_PF_ANCHOR
    pf_flavor: PfFlavor = "freebsd"

    def __post_init__(self) -> None:
        for name in ("ports", "interfaces", "exclude_interfaces"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        self._validate()

    def _validate(self) -> None:
        if not 1 <= self.divert_port <= 0xFFFF:
            raise RuleSpecError(f"divert port must be in 1..65535, got {self.divert_port}")
        check_scope(self, MAX_PORTS, _IFNAME)
        if not 1 <= self.ipfw_rule <= IPFW_MAX_RULE:
            raise RuleSpecError(f"ipfw rule number must be in 1..{IPFW_MAX_RULE}")
        if not _ANCHOR.match(self.pf_anchor) or len(self.pf_anchor) > 64:
            raise RuleSpecError(f"invalid pf anchor name {self.pf_anchor!r}")
        if self.pf_flavor not in ("freebsd", "openbsd"):
            raise RuleSpecError(f"pf flavor must be 'freebsd' or 'openbsd', got {self.pf_flavor!r}")

    @property
    def excluded(self) -> tuple[str, ...]:
        """Interfaces never diverted: loopback in host mode plus the configured ones."""
        if self.interfaces:
            return ()  # an include list already says everything
        base = (LOOPBACK,) if self.mode == "host" else ()
        return base + tuple(i for i in self.exclude_interfaces if i not in base)


# ---------------------------------------------------------------- ipfw (planning)


def _ipfw_common(spec: BsdRuleSpec) -> Argv:
    ports = ",".join(str(p) for p in spec.ports)
    argv = ["add", str(spec.ipfw_rule), "divert", str(spec.divert_port)]
    argv += ["tcp", "from", "any", "to", "any", ports, "out", "not", "diverted"]
    if not spec.ipv6:
        argv.append("ip4")
    elif not spec.ipv4:
        argv.append("ip6")
    if spec.interfaces:
        if len(spec.interfaces) == 1:
            argv += ["xmit", spec.interfaces[0]]
        else:
            block: Argv = ["{"]
            for n, ifname in enumerate(spec.interfaces):
                block += (["or"] if n else []) + ["xmit", ifname]
            argv += [*block, "}"]
    for ifname in spec.excluded:
        argv += ["not", "xmit", ifname]
    return argv


def ipfw_rules(spec: BsdRuleSpec) -> list[Argv]:
    """The ``ipfw`` arguments (without the program) that add the divert rules."""
    common = _ipfw_common(spec)
    return [
        [*common, "tcpflags", "!syn", "tcpdatalen", "1-65535"],
        [*common, "tcpflags", "fin"],
        [*common, "tcpflags", "rst"],
    ]


def plan_ipfw_install(spec: BsdRuleSpec) -> list[Argv]:
    return [["ipfw", *rule] for rule in ipfw_rules(spec)]


def plan_ipfw_list(spec: BsdRuleSpec) -> Argv:
    return ["ipfw", "list", str(spec.ipfw_rule)]


def plan_ipfw_remove(spec: BsdRuleSpec) -> Argv:
    return ["ipfw", "delete", str(spec.ipfw_rule)]


@dataclass(frozen=True)
class IpfwState:
    """The rules found at govpass's rule number, split into ours and foreign."""

    ours: tuple[str, ...]
    foreign: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.ours or self.foreign)


def parse_ipfw_list(text: str, spec: BsdRuleSpec) -> IpfwState:
    """Classifies `ipfw list N` lines: ours divert to our port at our number."""
    ours: list[str] = []
    foreign: list[str] = []
    number = f"{spec.ipfw_rule:05d}"
    for raw in text.splitlines():
        line = raw.strip()
        if not line or not line.split()[0].isdigit():
            continue
        words = line.split()
        if words[0] != number:
            continue
        is_ours = any(
            words[i] == "divert" and words[i + 1] == str(spec.divert_port)
            for i in range(len(words) - 1)
        )
        (ours if is_ours else foreign).append(line)
    return IpfwState(tuple(ours), tuple(foreign))


# ---------------------------------------------------------------- pf (planning)


def _pf_list(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def render_pf_anchor(spec: BsdRuleSpec) -> str:
    """The anchor's rules, loaded with ``pfctl -a ANCHOR -f -``."""
    divert = (
        f"divert-to {spec.divert_port}"
        if spec.pf_flavor == "freebsd"
        else f"divert-packet port {spec.divert_port}"
    )
    families = [""] if spec.ipv4 and spec.ipv6 else ["inet " if spec.ipv4 else "inet6 "]
    ports = _pf_list([str(p) for p in spec.ports])
    lines = [
        f"# govpass: outbound TCP to port {ports} goes to divert port {spec.divert_port}.",
        "# The state this creates diverts every later packet of the connection, both ways.",
    ]
    skip = ""
    if spec.interfaces:
        where = f"on {_pf_list(list(spec.interfaces))} "
    elif len(spec.excluded) == 1:
        where = f"on ! {spec.excluded[0]} "
    elif spec.excluded:
        # A negated list would expand to rules joined by OR; a tag says "none of these".
        lines.append(f"match out on {_pf_list(list(spec.excluded))} tag {PF_SKIP_TAG}")
        where = ""
        skip = f" ! tagged {PF_SKIP_TAG}"
    else:
        where = ""
    for family in families:
        lines.append(
            f"pass out quick {where}{family}proto tcp from any to any port {ports}"
            f'{skip} {divert} label "{PF_LABEL}"'
        )
    return "\n".join(lines) + "\n"


def plan_pf_install(spec: BsdRuleSpec) -> tuple[Argv, str]:
    """(argv, stdin) that replace the anchor's rules in one pfctl transaction."""
    return ["pfctl", "-a", spec.pf_anchor, "-f", "-"], render_pf_anchor(spec)


def plan_pf_remove(spec: BsdRuleSpec) -> list[Argv]:
    """Flush the anchor, then kill the states its rule made: a state keeps its
    rule alive and would keep diverting to a port nobody reads (dropped)."""
    return [
        ["pfctl", "-a", spec.pf_anchor, "-F", "rules"],
        ["pfctl", "-k", "label", "-k", PF_LABEL],
    ]


def plan_pf_show(spec: BsdRuleSpec) -> Argv:
    return ["pfctl", "-a", spec.pf_anchor, "-s", "rules"]


def anchor_is_called(main_rules: str, anchor: str) -> bool:
    """Whether `pfctl -s rules` output calls `anchor` (itself or a `parent/*`)."""
    wanted = {anchor}
    parts = anchor.split("/")
    wanted |= {"/".join(parts[:i]) + "/*" for i in range(1, len(parts))}
    for raw in main_rules.splitlines():
        words = raw.split()
        if len(words) >= 2 and words[0] == "anchor" and words[1].strip('"') in wanted:
            return True
    return False


def render_plan(spec: BsdRuleSpec, firewall: BsdFirewall) -> str:
    """What `install` would apply, as text (dry runs); pure."""
    if firewall == "ipfw":
        return "\n".join(shlex.join(argv) for argv in plan_ipfw_install(spec)) + "\n"
    argv, text = plan_pf_install(spec)
    return f"# {shlex.join(argv)} <<EOF\n{text}# EOF\n"


# ---------------------------------------------------------------- executors


@dataclass(frozen=True)
class BsdResult:
    firewall: BsdFirewall
    commands: tuple[tuple[str, ...], ...]  # executed, in order
    changed: bool  # False: nothing was installed (remove) / nothing to do


def _ipfw_state(spec: BsdRuleSpec, runner: Runner) -> IpfwState:
    res = runner.run(plan_ipfw_list(spec), check=False)
    if res.ok:
        return parse_ipfw_list(res.stdout, spec)
    if _NO_RULE.search(res.stderr):
        return IpfwState((), ())
    raise FirewallError(res.error_line())


def _refuse_foreign(state: IpfwState, spec: BsdRuleSpec) -> None:
    if state.foreign:
        raise FirewallError(
            f"ipfw rule number {spec.ipfw_rule} holds rules that are not govpass's "
            f"({state.foreign[0]!r}); choose another number with --ipfw-rule"
        )


def install(spec: BsdRuleSpec, firewall: BsdFirewall, runner: Runner | None = None) -> BsdResult:
    """Installs the rules; installing again replaces, never duplicates."""
    runner = runner or Runner()
    done: list[tuple[str, ...]] = []
    if firewall == "ipfw":
        state = _ipfw_state(spec, runner)
        _refuse_foreign(state, spec)
        if state.ours:
            runner.run(plan_ipfw_remove(spec))
            done.append(tuple(plan_ipfw_remove(spec)))
        for added, argv in enumerate(plan_ipfw_install(spec)):
            res = runner.run(argv, check=False)
            if not res.ok:
                what = "nothing was added"
                if added:
                    undo = runner.run(plan_ipfw_remove(spec), check=False)
                    what = "rolled back" if undo.ok else f"rollback failed: {undo.error_line()}"
                raise FirewallError(f"{res.error_line()}; {what}")
            done.append(tuple(argv))
        return BsdResult("ipfw", tuple(done), True)
    main = runner.run(["pfctl", "-s", "rules"], check=False)
    if not main.ok:
        raise FirewallError(main.error_line())
    if not anchor_is_called(main.stdout, spec.pf_anchor):
        raise FirewallError(
            f'the pf ruleset never calls anchor "{spec.pf_anchor}": add '
            f'`anchor "{spec.pf_anchor}"` to the filter rules of /etc/pf.conf (after your '
            "own outbound block rules) and reload it with `pfctl -f /etc/pf.conf`"
        )
    argv, text = plan_pf_install(spec)
    runner.run(argv, input_text=text)
    return BsdResult("pf", (tuple(argv),), True)


def remove(spec: BsdRuleSpec, firewall: BsdFirewall, runner: Runner | None = None) -> BsdResult:
    """Removes govpass's rules; removing nothing is success."""
    runner = runner or Runner()
    if firewall == "ipfw":
        state = _ipfw_state(spec, runner)
        if not state.ours:
            return BsdResult("ipfw", (), False)
        _refuse_foreign(state, spec)
        runner.run(plan_ipfw_remove(spec))
        return BsdResult("ipfw", (tuple(plan_ipfw_remove(spec)),), True)
    shown = runner.run(plan_pf_show(spec), check=False)
    had_rules = shown.ok and any(line.strip() for line in shown.stdout.splitlines())
    flush, kill = plan_pf_remove(spec)
    runner.run(flush)
    # Best effort: older pfctl may not know `-k label`; the flush above is what matters.
    runner.run(kill, check=False)
    return BsdResult("pf", (tuple(flush), tuple(kill)), had_rules)


def show(spec: BsdRuleSpec, firewall: BsdFirewall, runner: Runner | None = None) -> str:
    runner = runner or Runner()
    if firewall == "ipfw":
        state = _ipfw_state(spec, runner)
        if state.empty:
            return f"govpass: no ipfw rules at number {spec.ipfw_rule}\n"
        lines = [f"ipfw rule {spec.ipfw_rule}:"]
        lines += [f"  {line}" for line in state.ours]
        lines += [f"  {line}   (not govpass's)" for line in state.foreign]
        return "\n".join(lines) + "\n"
    res: CommandResult = runner.run(plan_pf_show(spec), check=False)
    if not res.ok:
        raise FirewallError(res.error_line())
    body = [line for line in res.stdout.splitlines() if line.strip()]
    if not body:
        return f'govpass: pf anchor "{spec.pf_anchor}" is empty\n'
    return "\n".join([f'pf anchor "{spec.pf_anchor}":', *(f"  {line}" for line in body)]) + "\n"
