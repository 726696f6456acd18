"""Small clients the end-to-end tests run inside a lab namespace; each prints one JSON line.

``netprobe.py hello NAME ADDR PORT CAFILE [TIMEOUT]``
    A TLS client over memory BIOs: it writes the ClientHello to the socket itself, so it
    can report the exact bytes the application sent (``hello``, hex) next to the outcome
    (``ok``, the server's ``sni=`` echo, or ``error``).

``netprobe.py raw ADDR PORT HEX [--no-fin] [--timeout T]``
    Sends the bytes, half-closes (unless ``--no-fin``), and reads what comes back until
    the server closes (``echo``, hex).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import ssl
import sys


def hello(args: argparse.Namespace) -> dict[str, object]:
    ctx = ssl.create_default_context(cafile=args.cafile)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=args.name)
    sent_first: bytes | None = None
    with socket.create_connection((args.addr, args.port), timeout=args.timeout) as sock:

        def flush() -> bytes:
            data = outgoing.read()
            if data:
                sock.sendall(data)
            return data

        def feed() -> bool:
            data = sock.recv(65536)
            if data:
                incoming.write(data)
            else:
                incoming.write_eof()
            return bool(data)

        try:
            while True:
                try:
                    tls.do_handshake()
                    flush()
                    break
                except ssl.SSLWantReadError:
                    data = flush()
                    if sent_first is None:
                        sent_first = data  # one write: the whole first flight
                    if not feed():
                        raise ConnectionError("closed during the handshake") from None
            request = f"GET / HTTP/1.1\r\nHost: {args.name}\r\nConnection: close\r\n\r\n"
            tls.write(request.encode())
            flush()
            response = b""
            while True:
                try:
                    chunk = tls.read(65536)
                except ssl.SSLWantReadError:
                    if not feed():
                        break
                    continue
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    break
                if not chunk:
                    break
                response += chunk
        except (OSError, ssl.SSLError) as exc:
            return {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                "hello": (sent_first or b"").hex(),
            }
    text = response.decode("latin-1")
    m = re.search(r"sni=([^<\s]*)", text)
    return {
        "ok": text.startswith("HTTP/1.1 200"),
        "sni": m.group(1) if m else None,
        "hello": (sent_first or b"").hex(),
    }


def raw(args: argparse.Namespace) -> dict[str, object]:
    payload = bytes.fromhex(args.hex)
    echo = b""
    with socket.create_connection((args.addr, args.port), timeout=args.timeout) as sock:
        sock.sendall(payload)
        if not args.no_fin:
            sock.shutdown(socket.SHUT_WR)
        try:
            while chunk := sock.recv(65536):
                echo += chunk
        except OSError as exc:
            return {"echo": echo.hex(), "error": f"{type(exc).__name__}: {exc}"}
    return {"echo": echo.hex()}


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hello")
    h.add_argument("name")
    h.add_argument("addr")
    h.add_argument("port", type=int)
    h.add_argument("cafile")
    h.add_argument("timeout", type=float, nargs="?", default=10.0)
    r = sub.add_parser("raw")
    r.add_argument("addr")
    r.add_argument("port", type=int)
    r.add_argument("hex")
    r.add_argument("--no-fin", action="store_true")
    r.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args()
    out = hello(args) if args.cmd == "hello" else raw(args)
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
