"""Capture backends. Each can say why it is not usable on this machine, so
``govpass doctor`` can list them; which backends a platform has, which one runs
by default, and which platform-only module answers for a backend are decided
here and only here (which platform this is: govpass.host_os)."""

from __future__ import annotations

import importlib.util

from govpass import host_os

NAMES = ("nfqueue", "divert")


def platform_names(platform: str | None = None) -> tuple[str, ...]:
    """The backends that exist on `platform`, its own default first: NFQUEUE
    (and pydivert's eBPF divert) on Linux; divert alone elsewhere (WinDivert on
    Windows, divert(4) on FreeBSD)."""
    if host_os.is_linux(platform):
        return NAMES
    return ("divert",)


def default_name(platform: str | None = None) -> str:
    """The backend `govpass run` uses when none is set: the platform's own."""
    return platform_names(platform)[0]


def unavailable_reason(name: str) -> str | None:
    """None when backend `name` can run here, else one line saying why not."""
    if name == "nfqueue":
        if not host_os.is_linux():
            return "NFQUEUE exists only on Linux"
        if importlib.util.find_spec("netfilterqueue") is None:
            return (
                "Python package netfilterqueue is missing "
                "(apt install libnetfilter-queue-dev; pip install netfilterqueue)"
            )
        from govpass.privileges import missing_capabilities

        missing = missing_capabilities()
        if missing:
            return f"needs root or CAP_NET_ADMIN and CAP_NET_RAW (missing {', '.join(missing)})"
        return None
    if name == "divert":
        if host_os.is_freebsd():
            from govpass.backends import freebsd

            return freebsd.unavailable_reason()
        from govpass.backends import divert

        return divert.unavailable_reason()
    return f"unknown backend {name!r} (accepted: {', '.join(NAMES)})"
