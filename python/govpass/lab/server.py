"""The lab's TLS server: a small threaded HTTPS responder that names the SNI it saw.

Run inside the server namespace as::

    python -m govpass.lab.server --cert CERT --key KEY --log LOG [--port 443]

It answers every request with ``HTTP/1.1 200 OK`` and a body containing ``sni=<name>``
(``sni=-`` when the client sent none), listens on 0.0.0.0 and [::], and writes one JSON
line per connection to LOG (first line: ``{"event": "ready", ...}``).

:func:`make_cert` makes the self-signed certificate with the ``openssl`` CLI;
:func:`openssl_server_argvs` is the ``openssl s_server -www`` alternative.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from govpass.lab.netns import run

MARKER = "sni="


def make_cert(directory: Path, names: Sequence[str], ips: Sequence[str] = ()) -> tuple[Path, Path]:
    """A self-signed EC certificate for ``names`` (and ``*.name``) plus ``ips``; (cert, key)."""
    cert, key = directory / "server-cert.pem", directory / "server-key.pem"
    sans = [f"DNS:{n}" for n in names] + [f"DNS:*.{n}" for n in names]
    sans += [f"IP:{ip}" for ip in ips]
    run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=govpass-lab",
            "-addext",
            "subjectAltName=" + ",".join(sans),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ]
    )
    return cert, key


def openssl_server_argvs(cert: Path, key: Path, port: int = 443) -> list[list[str]]:
    """``openssl s_server -www`` (status page, no SNI echo): one process per family,
    since s_server listens on a single socket and its [::] socket is IPv6-only."""
    common = ["-quiet", "-cert", str(cert), "-key", str(key), "-www"]
    return [
        ["openssl", "s_server", "-4", "-accept", f"0.0.0.0:{port}", *common],
        ["openssl", "s_server", "-6", "-accept", f"[::]:{port}", *common],
    ]


def _response(sni: str | None) -> bytes:
    body = f'<html><body><p id="sni">{MARKER}{sni or "-"}</p></body></html>\n'.encode()
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class Server:
    def __init__(self, cert: Path, key: Path, port: int, log: IO[str]) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.ctx.sni_callback = self._on_sni
        self.port = port
        self.log = log
        self.log_lock = threading.Lock()
        self.seen: dict[int, str] = {}

    def _on_sni(self, sslsock: object, name: str | None, _ctx: ssl.SSLContext) -> None:
        if name:
            self.seen[id(sslsock)] = name

    def emit(self, **fields: object) -> None:
        with self.log_lock:
            self.log.write(json.dumps({"ts": round(time.time(), 3), **fields}) + "\n")
            self.log.flush()

    def listeners(self) -> list[socket.socket]:
        out = []
        for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((addr, self.port))
            sock.listen(64)
            out.append(sock)
        return out

    def accept_loop(self, sock: socket.socket) -> None:
        while True:
            conn, peer = sock.accept()
            threading.Thread(target=self.handle, args=(conn, peer), daemon=True).start()

    def handle(self, conn: socket.socket, peer: tuple[object, ...]) -> None:
        conn.settimeout(10)
        where = f"{peer[0]}:{peer[1]}"
        tls = self.ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        sni: str | None = None
        try:
            with tls:
                tls.do_handshake()
                sni = self.seen.pop(id(tls), None)
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 65536:
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                tls.sendall(_response(sni))
                self.emit(
                    peer=where,
                    sni=sni,
                    tls=tls.version(),
                    ok=True,
                    request=request.split(b"\r\n", 1)[0].decode("latin-1"),
                )
        except (OSError, ssl.SSLError) as exc:
            sni = sni or self.seen.pop(id(tls), None)
            self.emit(peer=where, sni=sni, ok=False, error=f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m govpass.lab.server")
    ap.add_argument("--cert", type=Path, required=True)
    ap.add_argument("--key", type=Path, required=True)
    ap.add_argument("--port", type=int, default=443)
    ap.add_argument("--log", type=Path, required=True)
    args = ap.parse_args(argv)
    with open(args.log, "a", encoding="utf-8") as log:
        server = Server(args.cert, args.key, args.port, log)
        socks = server.listeners()
        for sock in socks[1:]:
            threading.Thread(target=server.accept_loop, args=(sock,), daemon=True).start()
        server.emit(event="ready", port=args.port)
        server.accept_loop(socks[0])


if __name__ == "__main__":
    main()
