"""One attempt against real loopback servers: each failure kind is told apart."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from govpass.probe import attempt as at

Handler = Callable[[socket.socket], None]


@pytest.fixture
def server() -> Iterator[Callable[[Handler], int]]:
    socks: list[socket.socket] = []

    def start(handle: Handler) -> int:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        socks.append(s)

        def loop() -> None:
            while True:
                try:
                    conn, _ = s.accept()
                except OSError:
                    return
                threading.Thread(target=handle, args=(conn,), daemon=True).start()

        threading.Thread(target=loop, daemon=True).start()
        return int(s.getsockname()[1])

    yield start
    for s in socks:
        s.close()


@pytest.fixture(scope="module")
def tls_ctx(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    d: Path = tmp_path_factory.mktemp("cert")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(d / "k.pem"), "-out", str(d / "c.pem"), "-days", "1",
         "-subj", "/CN=probe-test"],
        check=True, capture_output=True,
    )  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "c.pem", d / "k.pem")
    return ctx


def _try(port: int, **kw: object) -> at.Outcome:
    return at.attempt("127.0.0.1", port, "blocked.example", mark=0, timeout=1.5, **kw)  # type: ignore[arg-type]


def _read_hello(conn: socket.socket) -> None:
    conn.settimeout(2)
    with contextlib.suppress(OSError):
        conn.recv(65536)


def test_reset(server: Callable[[Handler], int]) -> None:
    def rst(conn: socket.socket) -> None:
        _read_hello(conn)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        conn.close()

    assert _try(server(rst)).kind == at.RST


def test_silence_is_timeout(server: Callable[[Handler], int]) -> None:
    held: list[socket.socket] = []
    assert _try(server(held.append)).kind == at.TIMEOUT


def test_block_page_is_non_tls(server: Callable[[Handler], int]) -> None:
    def page(conn: socket.socket) -> None:
        _read_hello(conn)
        conn.sendall(b"HTTP/1.1 403 Forbidden\r\n\r\n\x1b[31mblocked")
        conn.close()

    o = _try(server(page))
    assert o.kind == at.NON_TLS
    assert "403" in o.detail


def test_close_without_a_word(server: Callable[[Handler], int]) -> None:
    def close(conn: socket.socket) -> None:
        _read_hello(conn)
        conn.close()

    assert _try(server(close)).kind == at.CLOSED


def test_refused() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    assert _try(port).kind == at.REFUSED


def test_every_variant_and_a_fetch_ok(
    server: Callable[[Handler], int], tls_ctx: ssl.SSLContext
) -> None:
    def tls(conn: socket.socket) -> None:
        conn.settimeout(3)
        try:
            with tls_ctx.wrap_socket(conn, server_side=True) as t:
                t.recv(4096)
                t.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000)
        except (OSError, ssl.SSLError):
            pass

    port = server(tls)
    for hello in at.HELLO_SIZES:
        for version in at.TLS_VERSIONS:
            o = _try(port, hello=hello, version=version)
            assert o.kind == at.OK, (hello, version, o)
    fetched = _try(port, fetch=at.FETCH_BYTES)
    assert fetched.kind == at.OK and fetched.received > 5000


def test_version_mismatch_is_an_alert(server: Callable[[Handler], int], tmp_path: Path) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(tmp_path / "k.pem"), "-out", str(tmp_path / "c.pem"),
         "-days", "1", "-subj", "/CN=probe-test"],
        check=True, capture_output=True,
    )  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2

    def tls12(conn: socket.socket) -> None:
        conn.settimeout(3)
        try:
            ctx.wrap_socket(conn, server_side=True).close()
        except (OSError, ssl.SSLError):
            conn.close()

    assert _try(server(tls12), version="1.3").kind == at.ALERT


def test_freeze_after_some_data(server: Callable[[Handler], int], tls_ctx: ssl.SSLContext) -> None:
    def freeze(conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            t = tls_ctx.wrap_socket(conn, server_side=True)
            t.recv(4096)
            t.sendall(b"HTTP/1.1 200 OK\r\n\r\n" + b"y" * 18000)
            threading.Event().wait(3)
        except (OSError, ssl.SSLError):
            pass

    o = _try(server(freeze), fetch=at.FETCH_BYTES)
    assert o.kind == at.FREEZE
    assert 18000 <= o.received < at.FETCH_BYTES


def test_pq_hello_spans_two_segments_and_no_more() -> None:
    for version in (*at.TLS_VERSIONS, at.ANY_VERSION):
        pq = len(at.hello_bytes("blocked.example", at.PQ, version))
        assert 1500 < pq <= 2 * 1460, (version, pq)  # two segments at MSS 1460
        assert len(at.hello_bytes("blocked.example", at.CLASSIC, version)) < 1400


X25519_ONLY = bytes.fromhex("000a 0004 0002 001d")  # supported_groups: x25519
P256_ONLY = bytes.fromhex("000a 0004 0002 0017")  # supported_groups: secp256r1


def test_classic_hello_drops_a_default_pq_key_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a library that offers X25519MLKEM768 by default (OpenSSL 3.5: 1.5 KB hellos
    without any padding), the classic hello offers one classic group alone: X25519,
    or P-256 where Python takes only EC curve names (Debian 12's 3.11.2)."""
    monkeypatch.setattr(at, "_has_pq_key_share", lambda version: True)
    for version in at.TLS_VERSIONS:
        hello = at.hello_bytes("blocked.example", at.CLASSIC, version)
        assert (X25519_ONLY in hello or P256_ONLY in hello) and len(hello) < 1400
    monkeypatch.setattr(at, "_has_pq_key_share", lambda version: False)
    hello = at.hello_bytes("blocked.example", at.CLASSIC, "1.3")
    assert X25519_ONLY not in hello and P256_ONLY not in hello


@pytest.mark.parametrize("missing", [0, -3, 1, 30, 256, 257, 1283, 2000])
def test_alpn_padding_adds_about_what_is_missing(missing: int) -> None:
    names = at.alpn_padding(missing)
    added = sum(len(n) + 1 for n in names)
    assert all(0 < len(n) <= 255 and n.isascii() for n in names)
    assert added == 0 if missing <= 0 else missing <= added < missing + 32, (missing, added)


def test_ports_are_fresh() -> None:
    picker = at.PortPicker(seed=1)
    seen = set()
    for _ in range(50):
        with socket.socket() as s:
            port = picker.bind(s, socket.AF_INET)
        assert port not in seen
        seen.add(port)
