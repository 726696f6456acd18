"""Which network interfaces govpass acts on (Linux).

By default govpass leaves alone what is not a plain path to the internet:
loopback, VPN and tunnel interfaces (WireGuard, tun/tap, PPP, GRE, IPIP/SIT,
IPsec VTI, ...). It detects them from sysfs and reports the physical
interfaces carrying the default route per IP family, so `govpass doctor` can
say what it will touch and why. Explicit `--iface` (include) and
`--exclude-iface` always win over detection.

On Windows the same questions are answered from the adapter list
(``GetAdaptersAddresses``): the interface type (loopback, tunnel, PPP,
Ethernet, Wi-Fi), VPN drivers recognised by their description (WireGuard,
Wintun, TAP, ...), and whether the adapter has a default gateway.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from govpass import host_os

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
    index: int = 0  # interface index where known (Windows: IfIndex)

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


IFB_NOTE = (
    "ifb device: traffic redirected from ingress for shapers; the kernel split leaves it alone"
)


def classify(name: str, sys_net: Path = SYS_NET, driver: str = "") -> tuple[str, str]:
    """(kind, reason) of interface `name` from sysfs (and its rtnetlink driver name,
    which sysfs does not show for every software device)."""
    if driver == "ifb":
        return "virtual", IFB_NOTE
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


def _drivers() -> dict[str, str]:
    """Interface name -> rtnetlink driver name of this namespace ({} if unreadable)."""
    from govpass import links

    try:
        return {link.name: link.driver for link in links.dump()}
    except links.LinkError:
        return {}


def detect(
    sys_net: Path = SYS_NET,
    proc: Path = Path("/proc/net"),
    drivers: dict[str, str] | None = None,
) -> Detection:
    if host_os.is_windows():
        return detect_windows()
    try:
        names = sorted(os.listdir(sys_net))
    except OSError:
        return Detection()
    if drivers is None:
        drivers = _drivers() if sys_net == SYS_NET else {}
    v4, v6 = default_route_interfaces(proc)
    found = []
    for name in names:
        kind, reason = classify(name, sys_net, drivers.get(name, ""))
        found.append(Interface(name, kind, reason, name in v4, name in v6))
    return Detection(tuple(found))


def check_listed(names: Iterable[str], setting: str = "iface") -> None:
    """ConfigError naming the first listed interface (not a ``prefix+`` pattern)
    that this network namespace does not have: rules for it would match nothing.
    One that appears later (ppp0, a VPN) is named by a pattern (``ppp+``)."""
    from govpass import links
    from govpass.errors import ConfigError

    wanted = [n for n in names if not n.endswith("+")]
    if not wanted:
        return
    try:
        present = {link.name for link in links.dump()}
    except links.LinkError:
        return  # cannot tell; the rules take the names as they are
    for name in wanted:
        if name not in present:
            raise ConfigError(
                f"{setting}: no interface {name!r} here (accepted: names of existing "
                "interfaces, or a prefix ending in '+' for one that appears later; "
                "`ip link` lists them)",
                field=setting,
            )


def exclusions(
    detection: Detection, include: Iterable[str], exclude: Iterable[str]
) -> tuple[str, ...]:
    """Interfaces the rules must skip: the explicit ones plus detected tunnels
    and VPNs, minus any the user explicitly included. Loopback is always
    skipped by the rules themselves."""
    wanted = tuple(include)
    out = list(dict.fromkeys(exclude))
    for name in detection.excluded:
        if name != "lo" and not matches(name, wanted) and name not in out:
            out.append(name)
    return tuple(out)


def matches(name: str, patterns: Iterable[str]) -> bool:
    """iptables interface matching: "eth+" is every name starting with "eth"."""
    for pattern in patterns:
        if pattern.endswith("+") and name.startswith(pattern[:-1]):
            return True
        if name == pattern:
            return True
    return False


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


# ------------------------------------------------------------------ Windows

# IF_TYPE_* values of the Windows IP Helper API (ipifcons.h).
WIN_LOOPBACK = 24
WIN_TUNNEL_TYPES = {131: "tunnel", 23: "PPP", 53: "virtual (VPN client)"}
WIN_PHYSICAL_TYPES = {6: "Ethernet", 71: "Wi-Fi", 243: "mobile broadband", 244: "mobile broadband"}
# Drivers of VPN software that present themselves as Ethernet adapters.
WIN_VPN_DRIVER = re.compile(
    r"wireguard|wintun|tap-windows|openvpn|tailscale|zerotier|fortinet|cisco anyconnect|"
    r"juniper|globalprotect|pangp|nordlynx|vpn",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class WinAdapter:
    """The fields of one IP_ADAPTER_ADDRESSES entry that classification needs."""

    name: str  # FriendlyName ("Ethernet", "Wi-Fi", "wg0")
    index: int  # IfIndex
    if_type: int
    description: str
    gateway_v4: bool = False
    gateway_v6: bool = False


def classify_windows(a: WinAdapter) -> tuple[str, str]:
    if a.if_type == WIN_LOOPBACK:
        return "loopback", "loopback"
    if a.if_type in WIN_TUNNEL_TYPES:
        return "tunnel", f"interface type {WIN_TUNNEL_TYPES[a.if_type]}"
    if WIN_VPN_DRIVER.search(a.description):
        return "tunnel", f"VPN driver ({a.description})"
    if a.if_type in WIN_PHYSICAL_TYPES:
        return "physical", f"{WIN_PHYSICAL_TYPES[a.if_type]} adapter ({a.description})"
    return "virtual", f"interface type {a.if_type} ({a.description})"


def detect_windows(adapters: Iterable[WinAdapter] | None = None) -> Detection:
    """Classifies Windows adapters (read with GetAdaptersAddresses when not given)."""
    if adapters is None:
        adapters = _windows_adapters()
    found = []
    for a in adapters:
        kind, reason = classify_windows(a)
        found.append(Interface(a.name, kind, reason, a.gateway_v4, a.gateway_v6, a.index))
    return Detection(tuple(found))


def _windows_adapters() -> list[WinAdapter]:  # pragma: no cover - Windows only
    """Reads the adapter list through iphlpapi.GetAdaptersAddresses (ctypes)."""
    import ctypes
    from ctypes import wintypes

    class SockAddr(ctypes.Structure):
        _fields_ = [
            ("lpSockaddr", ctypes.POINTER(ctypes.c_ushort)),
            ("iSockaddrLength", ctypes.c_int),
        ]

    class Gateway(ctypes.Structure):
        pass

    Gateway._fields_ = [
        ("Length", ctypes.c_ulong),
        ("Reserved", wintypes.DWORD),
        ("Next", ctypes.POINTER(Gateway)),
        ("Address", SockAddr),
    ]

    class Adapter(ctypes.Structure):
        pass

    Adapter._fields_ = [
        ("Length", ctypes.c_ulong),
        ("IfIndex", wintypes.DWORD),
        ("Next", ctypes.POINTER(Adapter)),
        ("AdapterName", ctypes.c_char_p),
        ("FirstUnicastAddress", ctypes.c_void_p),
        ("FirstAnycastAddress", ctypes.c_void_p),
        ("FirstMulticastAddress", ctypes.c_void_p),
        ("FirstDnsServerAddress", ctypes.c_void_p),
        ("DnsSuffix", ctypes.c_wchar_p),
        ("Description", ctypes.c_wchar_p),
        ("FriendlyName", ctypes.c_wchar_p),
        ("PhysicalAddress", ctypes.c_ubyte * 8),
        ("PhysicalAddressLength", wintypes.DWORD),
        ("Flags", wintypes.DWORD),
        ("Mtu", wintypes.DWORD),
        ("IfType", wintypes.DWORD),
        ("OperStatus", ctypes.c_int),
        ("Ipv6IfIndex", wintypes.DWORD),
        ("ZoneIndices", wintypes.DWORD * 16),
        ("FirstPrefix", ctypes.c_void_p),
        ("TransmitLinkSpeed", ctypes.c_ulonglong),
        ("ReceiveLinkSpeed", ctypes.c_ulonglong),
        ("FirstWinsServerAddress", ctypes.c_void_p),
        ("FirstGatewayAddress", ctypes.POINTER(Gateway)),
    ]
    gaa_flag_include_gateways = 0x0080
    size = ctypes.c_ulong(16 * 1024)
    for _ in range(4):
        buf = ctypes.create_string_buffer(size.value)
        ret = ctypes.windll.iphlpapi.GetAdaptersAddresses(  # type: ignore[attr-defined]
            0, gaa_flag_include_gateways, None, buf, ctypes.byref(size)
        )
        if ret != 111:  # ERROR_BUFFER_OVERFLOW: size now holds what is needed
            break
    if ret != 0:
        return []
    out = []
    node = ctypes.cast(buf, ctypes.POINTER(Adapter))
    while node:
        a = node.contents
        v4 = v6 = False
        gw = a.FirstGatewayAddress
        while gw:
            family = gw.contents.Address.lpSockaddr[0]
            v4 |= family == 2
            v6 |= family == 23
            gw = gw.contents.Next
        out.append(
            WinAdapter(
                a.FriendlyName or "", int(a.IfIndex), int(a.IfType), a.Description or "", v4, v6
            )
        )
        node = a.Next
    return out
