"""Fixtures for the rule tests: import path, root check, throw-away network namespaces."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
for _path in (_HERE.parents[1] / "python", _HERE):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from rules_lab import (  # noqa: E402
    Lab,
    Netns,
    delete_netns,
    link,
    make_cert,
    make_netns,
    start_server,
)

REQUIRED_TOOLS = ("ip", "iptables", "ip6tables", "nft", "conntrack", "openssl")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netns") is None:
        return
    if os.geteuid() != 0:
        pytest.fail(
            "netns test needs root (network namespaces, iptables); run as root, "
            "or deselect with -m 'not netns'",
            pytrace=False,
        )
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"netns test needs {', '.join(missing)}: "
            "apt-get install -y iproute2 iptables nftables conntrack openssl",
            pytrace=False,
        )


@pytest.fixture
def netns() -> Iterator[Netns]:
    ns = make_netns("n")
    try:
        yield ns
    finally:
        delete_netns(ns)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """client ─veth─ server on 198.51.100.0/24 and 2001:db8:100::/64; TLS server on :443."""
    made: list[Netns] = []
    try:
        client = make_netns("c")
        made.append(client)
        server = make_netns("s")
        made.append(server)
        link(client, server, "198.51.100", "2001:db8:100:", 1, 2)
        make_cert(tmp_path)
        start_server(server, tmp_path)
        yield Lab(client, server, tmp_path, "198.51.100.2", "2001:db8:100::2")
    finally:
        for ns in made:
            delete_netns(ns)


@pytest.fixture
def router_lab(tmp_path: Path) -> Iterator[Lab]:
    """client ─ router ─ server: 198.51.100.0/24 inside, 203.0.113.0/24 on the WAN side."""
    made: list[Netns] = []
    try:
        for tag in ("c", "r", "s"):
            made.append(make_netns(tag))
        client, router, server = made
        link(client, router, "198.51.100", "2001:db8:100:", 1, 254)
        wan_dev, _ = link(router, server, "203.0.113", "2001:db8:203:", 254, 2)
        router.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        router.run("sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
        client.run("ip", "route", "add", "default", "via", "198.51.100.254")
        client.run("ip", "-6", "route", "add", "default", "via", "2001:db8:100::254")
        server.run("ip", "route", "add", "default", "via", "203.0.113.254")
        server.run("ip", "-6", "route", "add", "default", "via", "2001:db8:203::254")
        make_cert(tmp_path)
        start_server(server, tmp_path)
        yield Lab(client, server, tmp_path, "203.0.113.2", "2001:db8:203::2", router, wan_dev)
    finally:
        for ns in made:
            delete_netns(ns)
