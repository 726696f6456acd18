"""QUIC helper for the --block-quic listed test (run inside lab namespaces).

``serve OUT``: records every datagram to UDP port 443 (IPv4 and IPv6) in OUT,
one line each: ``<digest> <length> <peer address>``.

``send ADDR NAME [--suites N] [--version 1|2] [--order 0,1,0]``: builds a real
client's first flight for server name NAME with aioquic (in memory, no QUIC
stack on the wire), sends its datagrams from one UDP socket to ADDR:443 in the
given order (indexes into the flight; repeats are retransmissions), and prints
one JSON line: the DCID, the digest of every datagram of the flight, and the
order sent. ``--suites N`` offers N cipher suites, which pushes the server name
back in the hello (385: the name straddles the first two Initial packets).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import selectors
import socket
import time


def digest(datagram: bytes) -> str:
    return hashlib.sha256(datagram).hexdigest()[:16]


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
                log.write(f"{digest(data)} {len(data)} {peer[0]}\n")


def flight(addr: str, name: str, suites: int, version: int) -> tuple[bytes, list[bytes]]:
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
    from aioquic.tls import CipherSuite

    cfg = QuicConfiguration(is_client=True, server_name=name, alpn_protocols=["h3"])
    cfg.supported_versions = [0x00000001 if version == 1 else 0x6B3343CF]
    if suites:
        cfg.cipher_suites = [CipherSuite.AES_128_GCM_SHA256] * suites
    conn = QuicConnection(configuration=cfg)
    conn.connect((addr, 443), now=0.0)
    datagrams = [data for data, _ in conn.datagrams_to_send(now=0.0)]
    dcid = datagrams[0][6 : 6 + datagrams[0][5]]
    return dcid, datagrams


def send(addr: str, name: str, suites: int, version: int, order: list[int] | None) -> None:
    dcid, datagrams = flight(addr, name, suites, version)
    order = order or list(range(len(datagrams)))
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        for i in order:
            # a local firewall DROP is reported to the sender as EPERM
            with contextlib.suppress(PermissionError):
                s.sendto(datagrams[i], (addr, 443))
            time.sleep(0.05)  # in order through the queue, like a client's pacing
    print(json.dumps({"dcid": dcid.hex(), "digests": [digest(d) for d in datagrams],
                      "order": order}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("serve")
    sv.add_argument("out")
    sd = sub.add_parser("send")
    sd.add_argument("addr")
    sd.add_argument("name")
    sd.add_argument("--suites", type=int, default=0)
    sd.add_argument("--version", type=int, choices=(1, 2), default=1)
    sd.add_argument("--order", default="")
    args = ap.parse_args()
    if args.cmd == "serve":
        serve(args.out)
    else:
        order = [int(i) for i in args.order.split(",")] if args.order else None
        send(args.addr, args.name, args.suites, args.version, order)


if __name__ == "__main__":
    main()
