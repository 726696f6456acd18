"""Both ends of the lab traffic, run inside the namespaces.

python3 tls_peer.py server CERT KEY PORT
    dual-stack listener; a connection whose first byte is 0x16 gets TLS,
    anything else is a plain line echo.  Prints READY when listening.
    Commands (one line each): ECHO <text> | UPLOAD <n> | DOWNLOAD <n>

python3 tls_peer.py client MODE HOST PORT CAFILE [COUNT|BYTES]
    MODE tls (COUNT connections), bulk (BYTES up and down in one connection),
    plain (non-TLS to the same port), split (ClientHello sent in two writes).
    Prints one JSON object: {"ports": [local ports], ...}.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import sys
import threading
import time

SERVER_NAME = "test.example"
SPLIT_AT = 40  # first write carries the record header + handshake type, not the whole hello


def _readline(read: object) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = read(1)  # type: ignore[operator]
        if not chunk:
            break
        buf += chunk
    return buf


def _serve_commands(sock: socket.socket | ssl.SSLSocket) -> None:
    line = _readline(sock.recv).decode().strip()
    cmd, _, arg = line.partition(" ")
    if cmd == "ECHO":
        sock.sendall(f"OK {arg}\n".encode())
    elif cmd == "UPLOAD":
        need = int(arg)
        got = 0
        while got < need:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += len(chunk)
        sock.sendall(f"GOT {got}\n".encode())
    elif cmd == "DOWNLOAD":
        sock.sendall(b"x" * int(arg))


def _handle(conn: socket.socket, ctx: ssl.SSLContext) -> None:
    try:
        conn.settimeout(10)
        first = conn.recv(1, socket.MSG_PEEK)
        if first == b"\x16":
            with ctx.wrap_socket(conn, server_side=True) as tls:
                _serve_commands(tls)
        else:
            line = _readline(conn.recv)
            conn.sendall(b"PLAIN " + line)
    except (OSError, ssl.SSLError):
        pass
    finally:
        conn.close()


def server(cert: str, key: str, port: int) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    lsock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    lsock.bind(("::", port))
    lsock.listen(64)
    print("READY", flush=True)
    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=_handle, args=(conn, ctx), daemon=True).start()


def _connect(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect((host, port))
    return sock


def _client_ctx(cafile: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    return ctx


def client_tls(host: str, port: int, cafile: str, count: int) -> dict[str, object]:
    ctx = _client_ctx(cafile)
    ports = []
    replies = []
    for i in range(count):
        with ctx.wrap_socket(_connect(host, port), server_hostname=SERVER_NAME) as tls:
            ports.append(tls.getsockname()[1])
            tls.sendall(f"ECHO {i}\n".encode())
            replies.append(_readline(tls.recv).decode().strip())
    return {"ports": ports, "replies": replies}


def client_bulk(host: str, port: int, cafile: str, nbytes: int) -> dict[str, object]:
    ctx = _client_ctx(cafile)
    with ctx.wrap_socket(_connect(host, port), server_hostname=SERVER_NAME) as tls:
        local = tls.getsockname()[1]
        tls.sendall(f"UPLOAD {nbytes}\n".encode())
        tls.sendall(b"u" * nbytes)
        reply = _readline(tls.recv).decode().strip()
    with ctx.wrap_socket(_connect(host, port), server_hostname=SERVER_NAME) as tls:
        local2 = tls.getsockname()[1]
        tls.sendall(f"DOWNLOAD {nbytes}\n".encode())
        got = 0
        while got < nbytes:
            chunk = tls.recv(65536)
            if not chunk:
                break
            got += len(chunk)
    return {"ports": [local, local2], "upload_reply": reply, "downloaded": got}


def client_plain(host: str, port: int) -> dict[str, object]:
    with _connect(host, port) as sock:
        local = sock.getsockname()[1]
        sock.sendall(b"hello, not tls\n")
        reply = _readline(sock.recv).decode().strip()
    return {"ports": [local], "reply": reply}


def client_split(host: str, port: int, cafile: str) -> dict[str, object]:
    """TLS over a memory BIO so the ClientHello can be written in two TCP segments."""
    ctx = _client_ctx(cafile)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=SERVER_NAME)
    sock = _connect(host, port)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    local = sock.getsockname()[1]
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    sock.sendall(hello[:SPLIT_AT])
    time.sleep(0.2)  # two separate segments, and the first one is held meanwhile
    sock.sendall(hello[SPLIT_AT:])
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pending = outgoing.read()
            if pending:
                sock.sendall(pending)
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("server closed during handshake") from None
            incoming.write(data)
    sock.sendall(outgoing.read())
    tls.write(b"ECHO split\n")
    sock.sendall(outgoing.read())
    reply = b""
    while not reply.endswith(b"\n"):
        try:
            reply += tls.read(4096)
        except ssl.SSLWantReadError:
            data = sock.recv(65536)
            if not data:
                break
            incoming.write(data)
    sock.close()
    return {"ports": [local], "reply": reply.decode().strip(), "hello_len": len(hello)}


def main(argv: list[str]) -> int:
    if argv[0] == "server":
        server(argv[1], argv[2], int(argv[3]))
        return 0
    mode, host, port, cafile = argv[1], argv[2], int(argv[3]), argv[4]
    extra = int(argv[5]) if len(argv) > 5 else 1
    if mode == "tls":
        out = client_tls(host, port, cafile, extra)
    elif mode == "bulk":
        out = client_bulk(host, port, cafile, extra)
    elif mode == "plain":
        out = client_plain(host, port)
    elif mode == "split":
        out = client_split(host, port, cafile)
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
