"""Where a host is: the system resolver's answer, checked for the usual tampering."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Resolution:
    addr: str | None  # the address the probe connects to
    answers: tuple[str, ...]  # what the system resolver said
    warnings: tuple[str, ...] = ()
    error: str = ""


def suspicious(addr: str) -> str:
    """Why an address answered for a public name is suspicious ("" when it is not)."""
    ip = ipaddress.ip_address(addr)
    if ip.is_unspecified:
        return "unspecified address (a DNS block)"
    if ip.is_loopback:
        return "loopback address (a DNS block)"
    if ip.is_private or ip.is_reserved or ip.is_link_local or ip.is_multicast:
        return "private/bogon address (a DNS block or a local redirect)"
    return ""


def resolve(host: str, port: int, connect: str | None = None) -> Resolution:
    """The system's answer for ``host``; ``connect`` overrides the address used."""
    answers: list[str] = []
    error = ""
    try:
        for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            addr = str(info[4][0])
            if addr not in answers:
                answers.append(addr)
    except (OSError, UnicodeError) as e:
        error = f"system resolver: {getattr(e, 'strerror', None) or e}"
    warnings = [f"resolver answered {a}: {why}" for a in answers if (why := suspicious(a))]
    if connect is not None:
        if answers and connect not in answers:
            warnings.append(
                f"resolver answered {', '.join(answers)}, not --connect {connect} "
                "(DNS poisoned, or a CDN)"
            )
        return Resolution(connect, tuple(answers), tuple(warnings), error if not answers else "")
    # IPv4 first: the lab and most blocks are about IPv4; one address is enough.
    ordered = sorted(answers, key=lambda a: ":" in a)
    return Resolution(ordered[0] if ordered else None, tuple(answers), tuple(warnings), error)
