"""A server for the fail-open and bulk tests: TLS and raw TCP on the same port (443).

    python mixed_server.py --cert CERT --key KEY --log LOG [--port 443]

Per connection it peeks at the first bytes without consuming them. A complete TLS
ClientHello makes it a TLS connection that answers like the lab's own server
(``sni=<name>`` in the body), plus two bulk endpoints:

* ``GET /bytes/N``: a body of N bytes;
* ``POST /sink`` with ``Content-Length: N``: reads N bytes, answers ``received=N``.

Anything else (plain HTTP, random bytes, a record that never completes) is raw: it
reads until the client half-closes or goes quiet for 0.5 s, then echoes every byte back
and closes. One JSON line per connection goes to LOG (first line ``{"event": "ready"}``).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))

from govpass.lab.clienthello import read_hello, record_header

PEEK_QUIET = 1.0  # a TLS-looking record that stops growing this long is treated as raw
RAW_QUIET = 0.5
CHUNK = b"\xa5" * 65536


class Mixed:
    def __init__(self, cert: Path, key: Path, log: IO[str]) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.ctx.sni_callback = self._on_sni
        self.seen: dict[int, str] = {}
        self.log = log
        self.lock = threading.Lock()

    def _on_sni(self, sslsock: object, name: str | None, _ctx: ssl.SSLContext) -> None:
        if name:
            self.seen[id(sslsock)] = name

    def emit(self, **fields: object) -> None:
        with self.lock:
            self.log.write(json.dumps({"ts": round(time.time(), 3), **fields}) + "\n")
            self.log.flush()

    def peek_first_record(self, conn: socket.socket) -> bytes:
        """Bytes available without reading: the whole first TLS record if it comes."""
        last, changed = b"", time.monotonic()
        while True:
            try:
                data = conn.recv(70000, socket.MSG_PEEK)
            except TimeoutError:
                return last
            if not data:
                return last
            if data[0] != 0x16:
                return data
            hdr = record_header(data)
            if hdr is not None and len(data) >= 5 + hdr[1]:
                return data
            if data != last:
                last, changed = data, time.monotonic()
            elif time.monotonic() - changed > PEEK_QUIET:
                return data
            time.sleep(0.02)

    def handle(self, conn: socket.socket, peer: tuple[object, ...]) -> None:
        conn.settimeout(10)
        where = f"{peer[0]}:{peer[1]}"
        try:
            first = self.peek_first_record(conn)
            view = read_hello(first) if first[:1] == b"\x16" else None
            if view is not None and view.reason in ("sni", "no server_name extension"):
                self.tls(conn, where)
            else:
                self.raw(conn, where)
        except (OSError, ssl.SSLError) as exc:
            self.emit(peer=where, ok=False, error=f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    def raw(self, conn: socket.socket, where: str) -> None:
        conn.settimeout(RAW_QUIET)
        data = b""
        try:
            while chunk := conn.recv(65536):
                data += chunk
        except TimeoutError:
            pass
        conn.settimeout(10)
        conn.sendall(data)
        self.emit(peer=where, mode="raw", received=data.hex())

    def tls(self, conn: socket.socket, where: str) -> None:
        tls = self.ctx.wrap_socket(conn, server_side=True)
        with tls:
            sni = self.seen.pop(id(tls), None)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                head += chunk
            head, _, rest = head.partition(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            m_get = re.match(r"GET /bytes/(\d+) ", line)
            if m_get:
                size = int(m_get.group(1))
                tls.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    + f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode()
                )
                left = size
                while left:
                    tls.sendall(CHUNK[: min(left, len(CHUNK))])
                    left -= min(left, len(CHUNK))
                self.emit(peer=where, mode="tls", sni=sni, request=line, sent=size, ok=True)
                return
            m_len = re.search(rb"(?i)content-length:\s*(\d+)", head)
            received = len(rest)
            if line.startswith("POST") and m_len:
                want = int(m_len.group(1))
                while received < want:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    received += len(chunk)
                body = f"received={received}\n".encode()
            else:
                body = f'<html><body><p id="sni">sni={sni or "-"}</p></body></html>\n'.encode()
            tls.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            self.emit(peer=where, mode="tls", sni=sni, request=line, received=received, ok=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", type=Path, required=True)
    ap.add_argument("--key", type=Path, required=True)
    ap.add_argument("--port", type=int, default=443)
    ap.add_argument("--log", type=Path, required=True)
    args = ap.parse_args()
    with open(args.log, "a", encoding="utf-8") as log:
        server = Mixed(args.cert, args.key, log)
        socks = []
        for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((addr, args.port))
            sock.listen(64)
            socks.append(sock)

        def accept_loop(sock: socket.socket) -> None:
            while True:
                conn, peer = sock.accept()
                threading.Thread(target=server.handle, args=(conn, peer), daemon=True).start()

        threading.Thread(target=accept_loop, args=(socks[1],), daemon=True).start()
        server.emit(event="ready", port=args.port)
        accept_loop(socks[0])


if __name__ == "__main__":
    main()
