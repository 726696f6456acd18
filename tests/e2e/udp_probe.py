"""UDP helper for the QUIC test: `serve OUT` records the first byte of every
datagram to port 443 (IPv4 and IPv6) in OUT; `send ADDR FIRSTBYTE SIZE`
sends one datagram."""

from __future__ import annotations

import selectors
import socket
import sys


def serve(out: str) -> None:
    sel = selectors.DefaultSelector()
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, 443))
        sel.register(s, selectors.EVENT_READ)
    with open(out, "a", buffering=1) as log:
        while True:
            for key, _ in sel.select():
                data, peer = key.fileobj.recvfrom(65535)  # type: ignore[union-attr]
                log.write(f"{data[0]:#04x} {len(data)} {peer[0]}\n")


def send(addr: str, first: int, size: int) -> None:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(bytes([first]) + b"\x00\x00\x00\x01" + bytes(size - 5), (addr, 443))
        except PermissionError:
            # A local firewall DROP in OUTPUT is reported to the sender as EPERM.
            print("dropped by the local firewall")


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        send(sys.argv[2], int(sys.argv[3], 0), int(sys.argv[4]))
