"""Interface detection from a fake sysfs/procfs tree, and the real machine."""

from __future__ import annotations

from pathlib import Path

import pytest
from govpass import interfaces as ifs


def make_iface(
    root: Path,
    name: str,
    link_type: int,
    *,
    device: bool = False,
    devtype: str = "",
    tun: bool = False,
) -> None:
    d = root / name
    d.mkdir(parents=True)
    (d / "type").write_text(f"{link_type}\n")
    (d / "uevent").write_text(f"INTERFACE={name}\n" + (f"DEVTYPE={devtype}\n" if devtype else ""))
    if device:
        (d / "device").mkdir()
    if tun:
        (d / "tun_flags").write_text("0x1002\n")


def fake_tree(tmp_path: Path) -> tuple[Path, Path]:
    sys_net = tmp_path / "sys"
    make_iface(sys_net, "lo", 772)
    make_iface(sys_net, "eth0", 1, device=True)
    make_iface(sys_net, "wlan0", 1, device=True, devtype="wlan")
    make_iface(sys_net, "wg0", 65534, devtype="wireguard")
    make_iface(sys_net, "tun0", 65534, tun=True)
    make_iface(sys_net, "ppp0", 512)
    make_iface(sys_net, "veth1", 1)
    make_iface(sys_net, "br0", 1, devtype="bridge")
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "route").write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        "wg0\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n"
    )
    zeros = "0" * 32
    (proc / "ipv6_route").write_text(
        f"{zeros} 00 {zeros} 00 fe800000000000000000000000000001 00000400 0 0 3 wlan0\n"
        f"fe800000000000000000000000000000 40 {zeros} 00 {zeros} 00000100 0 0 1 eth0\n"
        f"{zeros} 00 {zeros} 00 {zeros} ffffffff 1 0 00200200 lo\n"
    )
    return sys_net, proc


@pytest.mark.linux_only  # classifies /sys/class/net; Windows reads its adapters
def test_classification(tmp_path: Path) -> None:
    sys_net, proc = fake_tree(tmp_path)
    det = ifs.detect(sys_net, proc)
    kinds = {i.name: i.kind for i in det.interfaces}
    assert kinds == {
        "lo": "loopback",
        "eth0": "physical",
        "wlan0": "physical",
        "wg0": "tunnel",
        "tun0": "tunnel",
        "ppp0": "tunnel",
        "veth1": "virtual",
        "br0": "virtual",
    }
    assert det.by_name("eth0").default_v4 and not det.by_name("eth0").default_v6
    assert det.by_name("wlan0").default_v6
    assert [i.name for i in det.default_route] == ["eth0", "wlan0"]


@pytest.mark.linux_only  # the fake tree is Linux's /sys and /proc
def test_tunnels_excluded_unless_explicitly_included(tmp_path: Path) -> None:
    det = ifs.detect(*fake_tree(tmp_path))
    assert ifs.exclusions(det, include=(), exclude=()) == ("ppp0", "tun0", "wg0")
    assert ifs.exclusions(det, include=("wg0",), exclude=("br0",)) == ("br0", "ppp0", "tun0")
    lines = ifs.describe(det, include=(), exclude=())
    assert "wg0: tunnel (wireguard device) - left alone" in lines
    assert "eth0: physical (hardware device, default route IPv4) - acted on" in lines


def test_real_machine_has_loopback() -> None:
    det = ifs.detect()
    lo = det.by_name("lo")
    assert lo is not None and lo.kind == "loopback"


def test_windows_adapters_are_classified_by_type_and_driver() -> None:
    adapters = [
        ifs.WinAdapter("Loopback Pseudo-Interface 1", 1, 24, "Software Loopback Interface 1"),
        ifs.WinAdapter("Ethernet", 7, 6, "Intel(R) Ethernet Connection", gateway_v4=True),
        ifs.WinAdapter("Wi-Fi", 12, 71, "Intel(R) Wi-Fi 6 AX201", gateway_v6=True),
        ifs.WinAdapter("wg0", 23, 53, "WireGuard Tunnel"),
        ifs.WinAdapter("OpenVPN TAP", 30, 6, "TAP-Windows Adapter V9"),
        ifs.WinAdapter("Teredo", 14, 131, "Teredo Tunneling Pseudo-Interface"),
        ifs.WinAdapter("vEthernet (WSL)", 40, 6, "Hyper-V Virtual Ethernet Adapter"),
    ]
    det = ifs.detect_windows(adapters)
    kinds = {i.name: i.kind for i in det.interfaces}
    assert kinds == {
        "Loopback Pseudo-Interface 1": "loopback",
        "Ethernet": "physical",
        "Wi-Fi": "physical",
        "wg0": "tunnel",
        "OpenVPN TAP": "tunnel",
        "Teredo": "tunnel",
        "vEthernet (WSL)": "physical",
    }
    assert [i.name for i in det.default_route] == ["Ethernet", "Wi-Fi"]
    assert det.by_name("wg0").index == 23


def test_divert_filter_skips_detected_tunnels_unless_included(tmp_path: Path) -> None:
    from govpass import config
    from govpass.backends import divert

    det = ifs.detect_windows(
        [
            ifs.WinAdapter("Ethernet", 7, 6, "Intel(R) Ethernet", gateway_v4=True),
            ifs.WinAdapter("wg0", 23, 53, "WireGuard Tunnel"),
        ]
    )
    cfg = config.load(env={})
    assert divert.filter_spec(cfg, detection=det).exclude_ifidx == (23,)
    assert "ifIdx != 23" in divert.build_filter(divert.filter_spec(cfg, detection=det))
    # Named in --iface, a tunnel is acted on.
    included = config.load(env={}, flags={"iface": "wg0"})
    assert divert.detected_tunnel_indexes(included, det) == ()
    assert divert.filter_spec(cfg, detection=ifs.Detection()).exclude_ifidx == ()


@pytest.mark.linux_only  # ifb devices and tunnel kinds come from Linux's rtnetlink
def test_an_ifb_is_named_as_such(tmp_path: Path) -> None:
    sys_net, proc = fake_tree(tmp_path)
    make_iface(sys_net, "ifb0", 1)  # sysfs shows no DEVTYPE for ifb; rtnetlink names it
    det = ifs.detect(sys_net, proc, drivers={"ifb0": "ifb", "veth1": "veth"})
    assert det.by_name("ifb0").reason == ifs.IFB_NOTE
    assert det.by_name("veth1").kind == "virtual"


def test_a_listed_interface_must_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    from govpass import links
    from govpass.errors import ConfigError

    monkeypatch.setattr(links, "dump", lambda: [links.Link(1, "lo", 772), links.Link(2, "eth0", 1)])
    ifs.check_listed(["eth0", "wg+"])  # a prefix may match interfaces that come later
    with pytest.raises(ConfigError, match=r"^iface: no interface 'nonexistent0' here") as e:
        ifs.check_listed(["eth0", "nonexistent0"])
    assert e.value.field == "iface"


@pytest.mark.linux_only
def test_a_tunnel_matched_by_an_iface_pattern_is_not_excluded(tmp_path: Path) -> None:
    det = ifs.detect(*fake_tree(tmp_path))
    assert ifs.exclusions(det, include=("ppp+", "eth0"), exclude=()) == ("tun0", "wg0")
