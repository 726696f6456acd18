"""govpass.kernel_split: when the settings allow it, which interfaces it covers, and
the gate it opens only while every covered interface carries the program.

The program is replaced by a fake here (attaching is the e2e tests' business:
tests/e2e/test_e2e_kernel_split.py); the gate is a real bpf map (root)."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, ClassVar

import pytest
from govpass import kernel_split
from govpass.bpf import syscall as sc
from govpass.config import Config
from govpass.links import Link
from govpass.rules import RuleSpec

ETHER, NONE, GRE, LOOPBACK = 1, 65534, 778, 772
LO, ETH0, WG0, DOCKER0 = (
    Link(1, "lo", LOOPBACK),
    Link(2, "eth0", ETHER),
    Link(3, "wg0", NONE),
    Link(4, "docker0", ETHER),
)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"kernel_split": "off"}, "kernel-split is off"),
        ({"backend": "divert"}, "backend divert"),
        ({"firewall": "none"}, "firewall none"),
        ({"prefilter": "conntrack"}, "prefilter conntrack"),
        ({"split_mode": "immediate"}, "split-mode immediate"),
        ({"split_pos": ("midsld",)}, "split-pos"),
        ({"split_chunk": 0}, "split-chunk 0"),
        ({"split_chunk": 65}, "split-chunk 65"),
        ({"hosts": ("blocked.example",)}, "host lists"),
        ({"split_chunk": 1, "max_seg_payload": 1}, "max-seg-payload 1"),
        ({"ports": tuple(str(p) for p in range(1, 18))}, "17 ports"),
    ],
)
def test_settings_that_rule_it_out_say_why(changes: dict[str, Any], words: str) -> None:
    why = kernel_split.config_reason(replace(Config(), **changes))
    assert why is not None and words in why


def test_defaults_allow_it() -> None:
    assert kernel_split.config_reason(Config()) is None
    assert kernel_split.config_reason(replace(Config(), split_chunk=64, mode="router")) is None


def test_params_follow_the_settings() -> None:
    config = replace(Config(), split_chunk=7, ports=("443", "8443"), mark=0x40, mode="router")
    params = kernel_split.params_for(config, 0)
    assert (params.chunk, params.ports, params.mark, params.local, params.l2) == (
        7,
        (443, 8443),
        0x40,
        False,
        0,
    )
    assert params.max_payload == 1460 + 7  # max-seg-payload + chunk: the rest fits one segment
    small = kernel_split.params_for(replace(Config(), max_seg_payload=100), 14)
    assert small.max_payload == 105 and small.local
    assert (params.max_seg_payload, small.max_seg_payload) == (1460, 100)


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        (RuleSpec(), ["eth0", "wg0", "docker0"]),
        (RuleSpec(exclude_interfaces=("wg0",)), ["eth0", "docker0"]),
        (RuleSpec(exclude_interfaces=("d+",)), ["eth0", "wg0"]),
        (RuleSpec(interfaces=("eth0",)), ["eth0"]),
        (RuleSpec(interfaces=("eth+", "wg0")), ["eth0", "wg0"]),
        (RuleSpec(mode="router", interfaces=("wg0",)), ["wg0"]),
    ],
)
def test_covered_interfaces_are_those_of_the_rules(spec: RuleSpec, names: list[str]) -> None:
    found = kernel_split.covered(spec, [LO, ETH0, WG0, DOCKER0])
    assert [link.name for link in found] == names


def test_ifb_devices_are_left_alone_and_named() -> None:
    ifb = Link(7, "ifb0", 1, "ifb")
    assert [link.name for link in kernel_split.covered(RuleSpec(), [LO, ETH0, ifb])] == ["eth0"]
    assert kernel_split.left_alone(RuleSpec(), [LO, ETH0, ifb]) == ["ifb0"]
    assert kernel_split.left_alone(RuleSpec(exclude_interfaces=("ifb+",)), [ifb]) == []


@pytest.mark.root
def test_the_log_says_why_an_ifb_is_left_alone(world: list[Link]) -> None:
    log: list[str] = []
    world.append(Link(7, "ifb0", 1, "ifb"))
    ks = kernel_split.KernelSplit(Config(), log.append)
    ks.open()
    try:
        ks.sync(RuleSpec())
        ks.sync(RuleSpec())
        assert FakeProgram.attached == [ETH0.index] and ks.interfaces() == ["eth0"]
        notes = [line for line in log if "ifb0" in line]
        assert notes == [f"kernel split: leaves ifb0 alone ({kernel_split.IFB_REASON})"]
    finally:
        ks.close()


# -- the gate ------------------------------------------------------------------------------


class FakeProgram:
    """Stands in for bpf.ksplit.Loaded: attach returns a descriptor, or fails for
    the interface indexes in ``refuse``."""

    refuse: ClassVar[set[int]] = set()
    attached: ClassVar[list[int]] = []

    def __init__(self, params: Any) -> None:
        self.params = params

    def attach(self, ifindex: int) -> int:
        if ifindex in self.refuse:
            raise sc.BpfError("link create", errno.EOPNOTSUPP)
        self.attached.append(ifindex)
        return os.open("/dev/null", os.O_RDONLY)

    def counters(self) -> dict[str, int]:
        return {"split": 2, "unsplit": 0, "first_only": 0, "dropped": 1}

    def close(self) -> None:
        pass


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Link]]:
    if os.geteuid() != 0:
        pytest.fail("the gate is a bpf map: run as root", pytrace=False)
    present = [LO, ETH0]
    FakeProgram.refuse = set()
    FakeProgram.attached = []
    monkeypatch.setattr(kernel_split.ksplit, "Loaded", FakeProgram)
    monkeypatch.setattr(kernel_split._links, "dump", lambda: list(present))
    yield present


def gate_value(ks: kernel_split.KernelSplit) -> int:
    assert ks.gate is not None
    raw = sc.map_lookup(ks.gate.map_fd, struct.pack("=I", 0), 4)
    assert raw is not None
    return int(struct.unpack("=I", raw)[0])


@pytest.mark.root
def test_gate_opens_once_every_covered_interface_is_attached(world: list[Link]) -> None:
    log: list[str] = []
    ks = kernel_split.KernelSplit(Config(), log.append)
    gate = ks.open()
    try:
        assert gate_value(ks) == 0 and (gate.min_payload, gate.max_payload) == (6, 1465)
        assert (gate.chunk, gate.max_seg_payload) == (5, 1460)  # the engine's cap, as the program's
        ks.sync(RuleSpec())
        assert gate_value(ks) == 1 and ks.on and ks.interfaces() == ["eth0"]
        assert FakeProgram.attached == [ETH0.index]
        assert log[-1] == "kernel split: on (tcx egress: eth0)"
        # A second interface appears: attached, and the gate stays open.
        world.append(WG0)
        ks.sync(RuleSpec())
        assert ks.interfaces() == ["eth0", "wg0"] and gate_value(ks) == 1
        assert "kernel split: attached to wg0" in log
        # One it cannot carry the program on: the gate closes, the reason names it.
        world.append(Link(5, "gre1", GRE))
        ks.sync(RuleSpec())
        assert gate_value(ks) == 0 and not ks.on
        assert "gre1: link type 778 not supported" in log[-1]
        # Excluded by the rules (or gone): detached, and the gate opens again.
        ks.sync(RuleSpec(exclude_interfaces=("gre1", "wg0")))
        assert gate_value(ks) == 1 and ks.interfaces() == ["eth0"]
        assert "kernel split: detached from wg0" in log
    finally:
        ks.close()
    assert not ks.on and ks.interfaces() == []
    assert ks.counters() == {"split": 4, "unsplit": 0, "first_only": 0, "dropped": 2}


@pytest.mark.root
def test_a_refused_attach_keeps_the_gate_shut(world: list[Link]) -> None:
    log: list[str] = []
    FakeProgram.refuse = {ETH0.index}
    ks = kernel_split.KernelSplit(Config(), log.append)
    ks.open()
    try:
        ks.sync(RuleSpec())
        assert gate_value(ks) == 0 and not ks.on
        assert "eth0: bpf link create" in ks.summary()
        FakeProgram.refuse = set()
        ks.sync(RuleSpec())
        assert gate_value(ks) == 1
    finally:
        ks.close()


@pytest.mark.root
def test_no_covered_interface_leaves_nothing_to_wait_for(world: list[Link]) -> None:
    ks = kernel_split.KernelSplit(Config(), lambda _: None)
    ks.open()
    try:
        ks.sync(RuleSpec(exclude_interfaces=("eth0",)))
        assert gate_value(ks) == 1 and ks.summary() == "on (tcx egress: no interface)"
    finally:
        ks.close()


@pytest.mark.root
def test_a_forked_child_keeps_no_link() -> None:
    """A worker forked while the daemon holds links (one of them not in its table
    yet, as when another thread is attaching) closes them all, so no program
    outlives the daemon's own descriptors."""
    if os.geteuid() != 0:
        pytest.fail("loading the program needs root", pytrace=False)
    import socket

    ks = kernel_split.KernelSplit(Config(), lambda _: None)
    ks.open()
    half_made = ks._programs[14].attach(socket.if_nametoindex("lo"))
    try:
        assert half_made in kernel_split._bpf_link_fds()
        pid = os.fork()
        if pid == 0:  # the child: report through the exit status only
            os._exit(0 if kernel_split._bpf_link_fds() == [] and ks.gate is None else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert half_made in kernel_split._bpf_link_fds()  # the parent keeps it
    finally:
        os.close(half_made)
        ks.close()
