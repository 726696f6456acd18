"""Checks behind `govpass doctor`: one result per question, each with a fix.

Each check returns data; the CLI prints it. Nothing here changes the system
(the firewall probe loads a spare chain or an `nft -c` dry run and removes it).
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from govpass import host_os
from govpass.config import Config
from govpass.privileges import is_admin, missing_capabilities

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def check_privileges() -> Check:
    if host_os.is_windows():
        if is_admin():
            return Check("privileges", "ok", "running as Administrator (elevated)")
        return Check(
            "privileges",
            "fail",
            "not elevated: the WinDivert driver loads only for Administrators",
            "run from an elevated prompt (Run as administrator), or install the service "
            "(scripts/windows/install-service.ps1)",
        )
    if is_admin():
        return Check("privileges", "ok", "running as root")
    missing = missing_capabilities()
    if not missing:
        return Check("privileges", "ok", "CAP_NET_ADMIN and CAP_NET_RAW present")
    return Check(
        "privileges",
        "fail",
        f"missing {', '.join(missing)}",
        "run as root, or use scripts/govpass.service (grants exactly these two)",
    )


def check_nfqueue() -> Check:
    if not host_os.is_linux():
        return Check("nfqueue", "warn", "not Linux: NFQUEUE unavailable", "use --backend divert")
    if os.path.exists("/proc/net/netfilter/nfnetlink_queue"):
        return Check("nfqueue", "ok", "kernel module nfnetlink_queue loaded")
    probe = shutil.which("modprobe")
    if (
        probe
        and subprocess.run(
            [probe, "-n", "nfnetlink_queue"], capture_output=True, check=False
        ).returncode
        == 0
    ):
        return Check("nfqueue", "ok", "nfnetlink_queue available (loads on first use)")
    return Check(
        "nfqueue",
        "fail",
        "kernel has no nfnetlink_queue",
        "enable CONFIG_NETFILTER_NETLINK_QUEUE or install the module",
    )


def check_queues(config: Config) -> Check:
    from govpass.backends.nfqueue import queue_table

    table = queue_table()
    ours = range(config.queue_num, config.queue_num + config.worker_count)
    taken = [q for q in ours if q in table]
    if taken:
        owners = ", ".join(f"{q} (portid {table[q]['portid']})" for q in taken)
        return Check(
            "queues",
            "warn",
            f"queue(s) already bound: {owners}",
            "another govpass or NFQUEUE program runs; stop it or pick --queue-num",
        )
    return Check("queues", "ok", f"queues {ours.start}..{ours.stop - 1} are free")


# What makes an unusable firewall backend or capture backend usable.
FIREWALL_FIXES = {
    "nftables": "modprobe nft_queue (a kernel with CONFIG_NFT_QUEUE); until then "
    "govpass uses iptables",
    "iptables": "apt install iptables; modprobe xt_NFQUEUE xt_u32 xt_connbytes",
}
BACKEND_FIXES = {
    "nfqueue": "on Linux: apt install libnetfilter-queue-dev; pip install netfilterqueue; "
    "run as root or with scripts/govpass.service",
    "divert": "as the reason says: on Windows pip install pydivert (WinDivert); on Linux "
    "pip install pydivert (eBPF); on FreeBSD run as root with ipdivert loaded at boot",
}


NEEDS_ROOT = "needs root (or CAP_NET_ADMIN)"
AS_ROOT_FIX = "run govpass doctor as root to check this"


def check_firewall(config: Config) -> list[Check]:
    from govpass import rules
    from govpass.errors import GovpassError
    from govpass.rules.from_config import rule_spec

    if "CAP_NET_ADMIN" in missing_capabilities():
        # Every probe below would fail with a permission error, which reads like a
        # missing module or package: say what is missing instead.
        return [
            Check(name, "warn", f"not checked: {NEEDS_ROOT}", AS_ROOT_FIX)
            for name in ("firewall", "pre-filter", "kernel split", "installed rules")
        ]
    from govpass.rules import tables

    out: list[Check] = []
    runner = rules.Runner()
    try:
        spec = rule_spec(config)
        tables.claim(spec.families, runner)  # the probes must leave no table behind
        try:
            detection = rules.detect(spec, runner)
        finally:
            tables.release(runner)
    except GovpassError as e:
        return [Check("firewall", "fail", str(e), "install iptables (and nftables)")]
    for s in detection.statuses:
        chosen = detection.chosen is not None and s.name == detection.chosen.name
        status: Status = "ok" if s.usable else "warn"
        label = " (will be used)" if chosen else ""
        fix = "" if s.usable else FIREWALL_FIXES.get(s.name, FIREWALL_FIXES["iptables"])
        out.append(Check(f"firewall {s.name}", status, s.reason + label, fix))
    prefilter = check_prefilter(config, detection.chosen.name if detection.chosen else None)
    out.append(prefilter)
    out.append(check_kernel_split(config, spec, prefilter.detail.startswith("bpf")))
    if detection.chosen is None:
        out.append(
            Check(
                "firewall",
                "fail",
                "no usable firewall backend",
                "apt install iptables; load xt_u32, xt_connbytes, xt_NFQUEUE",
            )
        )
    try:
        installed = rules.inventory()
    except GovpassError as e:
        out.append(Check("installed rules", "warn", str(e)))
        return out
    if installed:
        where = ", ".join(i.where for i in installed)
        running = _daemon_running()
        if running:
            out.append(Check("installed rules", "ok", f"present in {where} (daemon running)"))
        else:
            out.append(
                Check(
                    "installed rules",
                    "warn",
                    f"leftovers in {where}, no daemon runs",
                    "govpass rules remove",
                )
            )
    else:
        out.append(Check("installed rules", "ok", "none installed"))
    return out


def check_prefilter(config: Config, backend: str | None) -> Check:
    """Which pre-filter `run` would install: the eBPF program or conntrack, and why."""
    if config.prefilter == "conntrack":
        return Check("pre-filter", "ok", "conntrack (set by prefilter)")
    status: Status = "fail" if config.prefilter == "bpf" else "warn"
    if backend != "iptables-nft":
        where = f"the rules go to {backend}" if backend else "no firewall backend is usable"
        return Check(
            "pre-filter",
            status,
            f"conntrack: the eBPF pre-filter needs iptables-nft, {where}",
            "install iptables with the nf_tables backend (iptables-nft)",
        )
    from govpass.bpf.prefilter import unavailable_reason

    why = unavailable_reason()
    if why is None:
        return Check("pre-filter", "ok", "bpf: eBPF program loads; no connection tracking")
    return Check(
        "pre-filter",
        status,
        f"conntrack: {why}",
        "grant CAP_BPF and CAP_SYS_ADMIN (to load the program and mount a bpf fs); "
        "with conntrack every packet of the host pays for connection tracking",
    )


KERNEL_SPLIT_FIX = (
    "needs Linux 6.6 or later (tcx) and CAP_BPF with CAP_NET_ADMIN; until then every "
    "hello goes to the workers"
)


def check_kernel_split(config: Config, spec: object, bpf_prefilter: bool) -> Check:
    """Whether `run` would split whole one-packet hellos in the kernel, and where."""
    from govpass import links
    from govpass.bpf import syscall as sc
    from govpass.bpf.ksplit import Loaded
    from govpass.kernel_split import IFB_REASON, config_reason, covered, left_alone, params_for

    why = config_reason(config)
    if why is not None:
        return Check("kernel split", "ok", f"off: {why}")
    if not bpf_prefilter:
        return Check(
            "kernel split",
            "warn",
            "off: it needs the bpf pre-filter, which is not usable here",
            "see the pre-filter line",
        )
    try:
        with Loaded(params_for(config, 14)) as program:
            try:  # tcx answers ENODEV for a missing interface, older kernels EINVAL
                os.close(program.attach(0x7FFFFFFF))
            except sc.BpfError as e:
                if e.errno != errno.ENODEV:
                    raise
        all_links = links.dump()
        interfaces = covered(spec, all_links)
    except (sc.BpfError, OSError) as e:
        return Check("kernel split", "warn", f"off: {e.strerror or e}", KERNEL_SPLIT_FIX)
    odd = [i for i in interfaces if i.l2_bytes is None]
    if odd:
        names = ", ".join(f"{i.name} (link type {i.kind})" for i in odd)
        return Check(
            "kernel split",
            "warn",
            f"off: no support for the link type of {names}; every hello goes to the workers",
            "exclude those interfaces (--exclude-iface) if they carry no HTTPS",
        )
    names = ", ".join(i.name for i in interfaces) or "none yet"
    ifbs = left_alone(spec, all_links)
    ifb = f"; leaves {', '.join(ifbs)} alone ({IFB_REASON})" if ifbs else ""
    return Check(
        "kernel split",
        "ok",
        "on: ClientHellos whole in one packet are split by a tc egress program "
        f"(interfaces now: {names}); the others go to the workers{ifb}",
    )


def check_packet_loop(config: Config) -> Check:
    """How NFQUEUE workers read the queue and send a split's segments."""
    from govpass.backends.nfqueue import packet_path

    path = packet_path(config.packet_loop, config.inject, config.block_quic == "listed")
    if path == "python":
        why = "packet-loop python" if config.packet_loop == "python" else "block-quic listed"
        detail = f"python ({why}): a netfilterqueue callback per packet; segments through "
        detail += "raw sockets"
    elif path == "rust-verdicts":
        detail = (
            "rust; a split's last segments leave in the verdicts of the packets they "
            "replace, the others through raw sockets"
        )
    elif config.inject == "raw":
        detail = "rust; segments through raw sockets (inject raw)"
    else:
        detail = (
            "rust; segments through raw sockets: not in the initial user namespace, where "
            "the kernel refuses packets changed in a verdict"
        )
    return Check("packet loop", "ok", detail)


def check_daemon_privileges() -> list[Check]:
    """What a running daemon's processes hold (uid, capabilities, no_new_privs,
    seccomp), read from /proc: the daemon of the run directory and its children."""
    from govpass.privileges import describe
    from govpass.runtime.run_lock import running_daemon
    from govpass.runtime.state import run_dir

    pid = running_daemon(run_dir())
    if pid is None:
        return []
    checks = [Check(f"daemon pid {pid}", "ok", describe(pid))]
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            children = [int(c) for c in f.read().split()]
    except (OSError, ValueError):
        children = []
    for child in children:
        checks.append(Check(f"worker pid {child}", "ok", describe(child)))
    return checks


def _daemon_running() -> bool:
    from govpass.instance import find
    from govpass.runtime.run_lock import running_daemon
    from govpass.runtime.state import run_dir

    return find() is not None or running_daemon(run_dir()) is not None


def default_interfaces() -> list[str]:
    """Interfaces of the default routes (IPv4 and IPv6)."""
    names: list[str] = []
    ip = shutil.which("ip")
    if ip is None:
        return names
    for family in ("-4", "-6"):
        res = subprocess.run(
            [ip, "-j", family, "route", "show", "default"],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            for route in json.loads(res.stdout or "[]"):
                dev = route.get("dev")
                if dev and dev not in names:
                    names.append(dev)
        except ValueError:
            continue
    return names


def check_offload(iface: str) -> Check:
    ethtool = shutil.which("ethtool")
    if ethtool is None:
        return Check(
            f"offload {iface}",
            "warn",
            "ethtool not installed: cannot read GRO/GSO/TSO",
            "apt install ethtool",
        )
    res = subprocess.run([ethtool, "-k", iface], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        return Check(f"offload {iface}", "warn", f"ethtool -k {iface} failed")
    wanted = {
        "tcp-segmentation-offload": "tso",
        "generic-segmentation-offload": "gso",
        "generic-receive-offload": "gro",
    }
    state = {}
    for line in res.stdout.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in wanted:
            state[wanted[key.strip()]] = value.split()[0] if value.split() else "?"
    on = [k for k, v in state.items() if v == "on"]
    detail = " ".join(f"{k}={v}" for k, v in state.items())
    if on:
        return Check(
            f"offload {iface}",
            "warn",
            detail + " (packets seen in the queue are "
            "segmented by the kernel first; captures on this host may show "
            "merged segments)",
            f"ethtool -K {iface} {' '.join(k + ' off' for k in on)}"
            " (only needed for exact packet captures)",
        )
    return Check(f"offload {iface}", "ok", detail)


def check_interfaces(config: Config) -> list[Check]:
    from govpass import interfaces

    detection = interfaces.detect()
    lines = interfaces.describe(detection, config.iface, config.exclude_iface)
    out = [
        Check("interface " + line.split(":", 1)[0], "ok", line.split(": ", 1)[1]) for line in lines
    ]
    if not detection.default_route:
        out.append(
            Check(
                "default route",
                "warn",
                "no interface holds a default route",
                ("check `route print`" if host_os.is_windows() else "check `ip route`")
                + "; govpass acts on outbound traffic only",
            )
        )
    return out


def check_backends(config: Config) -> list[Check]:
    from govpass.backends import platform_names, unavailable_reason

    out = []
    for name in platform_names():
        reason = unavailable_reason(name)
        if reason is None:
            out.append(Check(f"backend {name}", "ok", "usable"))
        else:
            # A missing privilege is not fixed by installing packages.
            fix = "run as root or with scripts/govpass.service" if reason.startswith(
                "needs root"
            ) else BACKEND_FIXES.get(name, "")  # fmt: skip
            out.append(Check(f"backend {name}", "warn", reason, fix))
    if importlib.util.find_spec("pydivert") is not None and not host_os.is_freebsd():
        from govpass.backends import divert

        info = divert.describe(config)
        out.append(
            Check(
                "divert details",
                "ok",
                f"{info['implementation']}; queue len {info['queue_len']}, time "
                f"{info['queue_time_ms']} ms, size {info['queue_size']} B; "
                f"filter: {info['filter']}",
            )
        )
    return out


SHOWN_HOSTS = 10  # names per strategy in one line; the rest are counted


def check_strategies(config: Config) -> list[Check]:
    """What `strategy = auto` learned, from its state file: hosts per strategy and
    the unfixable ones, per learning profile; or why the file cannot be read."""
    import time

    from govpass.safefile import UnsafePathError
    from govpass.safetext import text
    from govpass.strategy_learner import DEFAULT_SCOPE, parse_scopes, read_state
    from govpass.targeting import learns_strategies

    if not learns_strategies(config):
        return []
    path = text(config.strategy_state)
    try:
        data = read_state(Path(config.strategy_state))
        scopes = {} if data is None else parse_scopes(data)
    except PermissionError:
        return [
            Check(
                "strategies",
                "warn",
                f"state file {path} is not readable by this user",
                "run govpass doctor as root (the daemon writes it 0640)",
            )
        ]
    except (OSError, ValueError, UnicodeDecodeError, UnsafePathError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return [
            Check(
                "strategies",
                "warn",
                f"state file {path} is unusable ({text(why, 100)}): the daemon ignores it "
                "and learns afresh",
                f"govpass strategy clear --strategy-state {path}",
            )
        ]
    if data is None:
        return [Check("strategies", "ok", f"nothing learned yet (no state file {path})")]
    from govpass.runtime.nfqueue_service import strategy_starts

    wanted = set(strategy_starts(config)) | {k for k, v in scopes.items() if v}
    now = time.time()
    out = []
    for scope in sorted(wanted):
        hosts = scopes.get(scope, {})
        by: dict[str, list[str]] = {}
        for host, (label, _plain, until) in sorted(hosts.items()):
            by.setdefault("unfixable" if until is not None and until > now else label, []).append(
                host
            )
        groups = "; ".join(f"{text(label)}: {_names(names)}" for label, names in sorted(by.items()))
        detail = f"{len(hosts)} host(s) learned, readable state file {path}"
        detail += f" ({groups})" if groups else ""
        if scope not in strategy_starts(config):
            detail += "; no configured profile learns for it now"
        name = "strategies" if scope == DEFAULT_SCOPE else f"strategies profile {text(scope)}"
        out.append(Check(name, "ok", detail))
    return out


def _names(names: list[str]) -> str:
    from govpass.safetext import text

    shown = ", ".join(text(n) for n in names[:SHOWN_HOSTS])
    more = len(names) - SHOWN_HOSTS
    return shown + (f" and {more} more" if more > 0 else "")


def run_checks(config: Config) -> list[Check]:
    checks: list[Callable[[], list[Check]]] = [lambda: [check_privileges()]]
    linux = host_os.is_linux()
    if linux:  # NFQUEUE, the Rust packet loop and the firewall exist only there
        checks += [
            check_daemon_privileges,
            lambda: [check_nfqueue()],
            lambda: [check_queues(config)],
            lambda: [check_packet_loop(config)],
            lambda: check_firewall(config),
        ]
    if linux or host_os.is_windows():  # FreeBSD's divert(4) path reads no interface kinds
        checks.append(lambda: check_interfaces(config))
    if linux:
        checks.append(
            lambda: (
                [check_offload(i) for i in default_interfaces()]
                or [Check("default route", "warn", "no default route found")]
            )
        )
    checks.append(lambda: check_backends(config))
    checks.append(lambda: check_strategies(config))
    results: list[Check] = []
    for check in checks:
        try:
            results.extend(check())
        except Exception as e:  # a broken probe is a finding, not a crash
            results.append(Check("doctor", "warn", f"probe failed: {type(e).__name__}: {e}"))
    return results
