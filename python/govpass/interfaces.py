"""Which network interfaces govpass acts on (Linux).

By default govpass leaves alone what is not a plain path to the internet:
loopback, VPN and tunnel interfaces (WireGuard, tun/tap, PPP, GRE, IPIP/SIT,
IPsec VTI, ...). It detects them from sysfs and reports the physical
interfaces carrying the default route per IP family, so `govpass doctor` can
say what it will touch and why. Explicit `--iface` (include) and
`--exclude-iface` always win over detection.

Windows adapter types are not read here; on Windows only explicit
exclusions apply.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

SYS_NET = Path("/sys/class/net")

# ARPHRD_* link types (linux/if_arp.h) that are tunnels or point-to-point.
TUNNEL_TYPES = {
    512: "ppp",
    768: "ipip",
    769: "ip6 tunnel",
    776: "sit",
    778: "gre",
    823: "ip6gre",
    65534: "no link layer (tun, WireGuard)",
}
LOOPBACK_TYPE = 772
# DEVTYPE values in uevent that mark virtual tunnels or VPN devices.
TUNNEL_DEVTYPES = {"wireguard", "vti", "vti6", "ipvlan_tunnel", "gtp", "l2tp", "ppp"}


@dataclass(frozen=True)
class Interface:
    name: str
    kind: str  # "physical" | "virtual" | "tunnel" | "loopback"
    reason: str
    default_v4: bool = False
    default_v6: bool = False

    @property
    def excluded_by_default(self) -> bool:
        return self.kind in ("tunnel", "loopback")


@dataclass(frozen=True)
class Detection:
    interfaces: tuple[Interface, ...] = field(default_factory=tuple)

    def by_name(self, name: str) -> Interface | None:
        return next((i for i in self.interfaces if i.name == name), None)

    @property
    def excluded(self) -> tuple[str, ...]:
        """Interfaces to leave alone by default (tunnels, VPNs, loopback)."""
        return tuple(i.name for i in self.interfaces if i.excluded_by_default)

    @property
    def default_route(self) -> tuple[Interface, ...]:
        return tuple(i for i in self.interfaces if i.default_v4 or i.default_v6)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return ""


def classify(name: str, sys_net: Path = SYS_NET) -> tuple[str, str]:
    """(kind, reason) of interface `name` from sysfs."""
    base = sys_net / name
    try:
        link_type = int(_read(base / "type") or "-1")
    except ValueError:
        link_type = -1
    uevent = dict(line.split("=", 1) for line in _read(base / "uevent").splitlines() if "=" in line)
    devtype = uevent.get("DEVTYPE", "")
    if link_type == LOOPBACK_TYPE or name == "lo":
        return "loopback", "loopback"
    if devtype in TUNNEL_DEVTYPES:
        return "tunnel", f"{devtype} device"
    if (base / "tun_flags").exists():
        return "tunnel", "tun/tap device"
    if link_type in TUNNEL_TYPES:
        return "tunnel", f"link type {TUNNEL_TYPES[link_type]}"
    if (base / "device").exists():
        return "physical", "hardware device"
    kind = devtype or "software"
    return "virtual", f"{kind} interface (no hardware device)"


def default_route_interfaces(proc: Path = Path("/proc/net")) -> tuple[set[str], set[str]]:
    """Names of the interfaces holding a default route: (IPv4, IPv6)."""
    v4: set[str] = set()
    v6: set[str] = set()
    for line in _read(proc / "route").splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 8 and cols[1] == "00000000" and cols[7] == "00000000":
            v4.add(cols[0])
    for line in _read(proc / "ipv6_route").splitlines():
        cols = line.split()
        if len(cols) >= 10 and cols[0] == "0" * 32 and cols[1] == "00" and cols[9] != "lo":
            v6.add(cols[9])
    return v4, v6


def detect(sys_net: Path = SYS_NET, proc: Path = Path("/proc/net")) -> Detection:
    try:
        names = sorted(os.listdir(sys_net))
    except OSError:
        return Detection()
    v4, v6 = default_route_interfaces(proc)
    found = []
    for name in names:
        kind, reason = classify(name, sys_net)
        found.append(Interface(name, kind, reason, name in v4, name in v6))
    return Detection(tuple(found))


def exclusions(
    detection: Detection, include: Iterable[str], exclude: Iterable[str]
) -> tuple[str, ...]:
    """Interfaces the rules must skip: the explicit ones plus detected tunnels
    and VPNs, minus any the user explicitly included. Loopback is always
    skipped by the rules themselves."""
    wanted = set(include)
    out = list(dict.fromkeys(exclude))
    for name in detection.excluded:
        if name != "lo" and name not in wanted and name not in out:
            out.append(name)
    return tuple(out)


def describe(detection: Detection, include: Iterable[str], exclude: Iterable[str]) -> list[str]:
    """One line per interface: what it is and whether govpass acts on it."""
    included = set(include)
    skipped = set(exclusions(detection, include, exclude)) | {"lo"}
    lines = []
    for i in detection.interfaces:
        routes = [f for f, on in (("IPv4", i.default_v4), ("IPv6", i.default_v6)) if on]
        route = f", default route {'+'.join(routes)}" if routes else ""
        acted = i.name in included if included else i.name not in skipped
        verdict = "acted on" if acted else "left alone"
        lines.append(f"{i.name}: {i.kind} ({i.reason}{route}) - {verdict}")
    return lines
