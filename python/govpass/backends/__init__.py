"""Capture backends. Each can say why it is not usable on this machine, so
``govpass doctor`` can list them; the platform switch lives here and only here."""

from __future__ import annotations

import importlib.util
import sys

NAMES = ("nfqueue", "divert")


def unavailable_reason(name: str) -> str | None:
    """None when backend `name` can run here, else one line saying why not."""
    if name == "nfqueue":
        if not sys.platform.startswith("linux"):
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
        if sys.platform.startswith("freebsd"):
            from govpass.backends import freebsd

            return freebsd.unavailable_reason()
        if importlib.util.find_spec("pydivert") is None:
            return "Python package pydivert is missing (pip install 'govpass[divert]')"
        from govpass.backends import divert

        return divert.unavailable_reason()
    return f"unknown backend {name!r} (accepted: {', '.join(NAMES)})"
