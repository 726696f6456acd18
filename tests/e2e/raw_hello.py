"""A TLS client whose ClientHello names a server with bytes no TLS library would send.

``raw_hello.py ADDRESS PORT NAME_HEX [TIMEOUT]``: builds a real ClientHello (Python's
ssl) for a placeholder name of the same length, puts the raw name bytes in its place
(every length field stays right), sends the record over a plain TCP connection and
waits for an answer. Exit 0: the server answered; 1: it did not (timeout, reset).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import sys


def placeholder(length: int) -> str:
    labels = []
    left = length
    while left > 0:
        size = min(63, left)
        if left - size == 1:  # a lone dot left over: shorten this label
            size -= 1
        labels.append("q" * size)
        left -= size + 1
    return ".".join(labels)


def hello_for(name: bytes) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    fake = placeholder(len(name))
    assert len(fake) == len(name)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=fake)
    with contextlib.suppress(ssl.SSLWantReadError):  # the hello is out, no answer yet
        conn.do_handshake()
    record = outgoing.read()
    assert record.count(fake.encode()) == 1
    return record.replace(fake.encode(), name)


def main() -> int:
    address, port, name_hex = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 3.0
    record = hello_for(bytes.fromhex(name_hex))
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
            sock.sendall(record)
            return 0 if sock.recv(1) else 1
        except OSError:
            return 1


if __name__ == "__main__":
    sys.exit(main())
