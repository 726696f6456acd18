"""govpass.host_os: the platform names every platform branch asks for."""

from __future__ import annotations

import sys

import pytest
from govpass import host_os


@pytest.mark.parametrize(
    ("platform", "name"),
    [
        ("linux", "linux"),
        ("win32", "windows"),
        ("freebsd14", "freebsd"),
        ("openbsd7", "openbsd"),
        ("darwin", "other"),
        ("cygwin", "other"),
    ],
)
def test_platform_names(platform: str, name: str) -> None:
    assert host_os.os_name(platform) == name
    assert host_os.is_linux(platform) == (name == "linux")
    assert host_os.is_windows(platform) == (name == "windows")
    assert host_os.is_freebsd(platform) == (name == "freebsd")
    assert host_os.is_openbsd(platform) == (name == "openbsd")


def test_read_at_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "freebsd13")
    assert host_os.is_freebsd() and host_os.platform_text() == "freebsd13"
    monkeypatch.setattr(sys, "platform", "win32")
    assert host_os.is_windows() and not host_os.is_freebsd()
