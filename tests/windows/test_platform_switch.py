"""The platform switch (govpass.backends): each platform's own default backend, only
its own backends in doctor, and the Windows privilege and adapter paths (run for
real inside Windows CPython by ci/windows.sh)."""

from __future__ import annotations

import sys

import pytest
from govpass import backends, doctor, interfaces, privileges
from govpass.config import Config, load
from govpass.settings import BY_NAME


@pytest.mark.parametrize(
    ("platform", "default", "names"),
    [
        ("linux", "nfqueue", ("nfqueue", "divert")),
        ("win32", "divert", ("divert",)),
        ("freebsd14", "divert", ("divert",)),
    ],
)
def test_each_platform_has_its_own_default_backend(
    platform: str, default: str, names: tuple[str, ...]
) -> None:
    assert backends.default_name(platform) == default
    assert backends.platform_names(platform) == names


def test_the_settings_default_is_this_platforms_backend() -> None:
    here = backends.default_name()
    assert Config().backend == here
    assert BY_NAME["backend"].default == here
    assert load(env={}).backend == here


def test_doctor_lists_only_this_platforms_checks() -> None:
    names = [c.name for c in doctor.run_checks(load(env={}))]
    assert not [n for n in names if n == "doctor"], "a probe failed"
    linux_only = {"nfqueue", "queues", "packet loop", "backend nfqueue"}
    if sys.platform.startswith("linux"):
        assert linux_only <= set(names)
    else:
        assert not linux_only & set(names)
        assert not [n for n in names if n.startswith(("firewall", "offload"))]
    assert names[0] == "privileges" and "backend divert" in names


@pytest.mark.skipif(sys.platform != "win32", reason="the Windows token")
def test_windows_privileges_come_from_the_token() -> None:
    import ctypes

    expected = bool(ctypes.windll.shell32.IsUserAnAdmin())  # type: ignore[attr-defined]
    assert privileges.is_admin() is expected
    check = doctor.check_privileges()
    assert check.status == ("ok" if expected else "fail")
    assert "Administrator" in check.detail


@pytest.mark.skipif(sys.platform != "win32", reason="GetAdaptersAddresses")
def test_windows_adapters_are_read_and_classified() -> None:
    detection = interfaces.detect()
    kinds = {i.name: i.kind for i in detection.interfaces}
    assert kinds, "GetAdaptersAddresses returned no adapter"
    assert "loopback" in kinds.values(), kinds
    for i in detection.interfaces:
        assert i.name and i.name.isprintable()
        assert i.index >= 0
