"""One TLS attempt on a fresh source port, and what became of it.

The handshake runs over a memory BIO, so the probe sees the raw bytes the other end
sent: a block page (``HTTP/1.1 403 ...``) is told from a TLS alert, a reset, a silence
and a close. No certificate is verified: the probe asks whether a TLS server answers
through this network, not whether it is the right one.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import random
import socket
import ssl
import time
from dataclasses import dataclass

from govpass.backends.inject import SO_MARK

# Outcome kinds, in words for the report.
OK = "ok"
RST = "rst"  # reset by the peer (or a box in between)
TIMEOUT = "timeout"  # silence: no answer within the timeout
ALERT = "alert"  # a TLS alert: a TLS server (or a box speaking TLS) refused
NON_TLS = "non-tls"  # bytes that are not TLS, e.g. an HTTP block page
CLOSED = "closed"  # the other end closed without a word
REFUSED = "refused"  # connect refused (RST to the SYN)
UNREACHABLE = "unreachable"  # no route / network unreachable
FREEZE = "freeze"  # handshake done, then the data stopped
ERROR = "error"  # anything else (local failure)
KINDS = (OK, RST, TIMEOUT, ALERT, NON_TLS, CLOSED, REFUSED, UNREACHABLE, FREEZE, ERROR)

CLASSIC, PQ = "classic", "pq"
HELLO_SIZES = (CLASSIC, PQ)
TLS_VERSIONS = ("1.3", "1.2")
ANY_VERSION = "any"  # TLS 1.2 or 1.3, as the server picks: what a browser offers
# A post-quantum (X25519MLKEM768) hello as Chrome, Firefox and OpenSSL 3.5 send it is
# 1.7-2 KB: two segments. A library that offers such a key share by default (OpenSSL
# 3.5) makes one by itself; for one that does not, ALPN names (each at most 255 bytes)
# pad the hello to that size. A "classic" hello is one without that key share: where
# the library's default hello has it, the groups are cut to X25519 (or P-256) alone.
PQ_HELLO_BYTES = 1800
_PQ_KEY_SHARE_SEEN = 1000  # an unpadded hello longer than this carries a PQ key share
_ALPN = {CLASSIC: ["http/1.1"], PQ: ["h2", "http/1.1"]}  # http/1.1: what the fetch speaks
FETCH_BYTES = 64 * 1024
_TLS_RECORD_TYPES = (0x14, 0x15, 0x16, 0x17)


@dataclass(frozen=True)
class Outcome:
    kind: str
    detail: str = ""  # raw words: may hold server bytes; escape before showing
    sport: int = 0
    received: int = 0  # application bytes after the handshake

    @property
    def ok(self) -> bool:
        return self.kind == OK

    @property
    def answered(self) -> bool:
        """Whether a TLS speaker answered at all (a handshake or an alert)."""
        return self.kind in (OK, ALERT, FREEZE)


def _plain_context(version: str, alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(alpn)
    return ctx


def _first_flight(ctx: ssl.SSLContext, sni: str) -> bytes:
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def _size(version: str, alpn: tuple[str, ...]) -> int:
    """The library's hello for a typical name's length."""
    return len(_first_flight(_plain_context(version, list(alpn)), "www.example.com"))


def alpn_padding(missing: int) -> list[str]:
    """ALPN names that lengthen a hello by about ``missing`` bytes (none if <= 0)."""
    names: list[str] = []
    while missing > 0:
        prefix = f"x-govpass-probe-pad-{len(names)}-"
        name = prefix + "p" * max(0, min(255, missing - 1) - len(prefix))
        names.append(name)
        missing -= len(name) + 1  # each name has a length byte
    return names


@functools.cache
def _alpn_for(hello: str, version: str) -> tuple[str, ...]:
    tail = tuple(_ALPN[hello])
    if hello == CLASSIC:
        return tail
    # The library may pad a short hello itself (OpenSSL: to 512 bytes) and drop that
    # padding once the names make it longer: measure, then correct once or twice.
    missing, padded = PQ_HELLO_BYTES - _size(version, tail), tail
    for _ in range(3):
        padded = (*alpn_padding(missing), *tail)
        off = PQ_HELLO_BYTES - _size(version, padded)
        if missing <= 0 or abs(off) < 16:
            break
        missing += off
    return padded


@functools.cache
def _has_pq_key_share(version: str) -> bool:
    return _size(version, tuple(_ALPN[CLASSIC])) > _PQ_KEY_SHARE_SEEN


def tls_context(hello: str, version: str) -> ssl.SSLContext:
    ctx = _plain_context(version, list(_alpn_for(hello, version)))
    if hello == CLASSIC and _has_pq_key_share(version):
        try:
            ctx.set_ecdh_curve("X25519")
        except ssl.SSLError:  # a Python that takes only EC curves here (3.11.2)
            ctx.set_ecdh_curve("prime256v1")
    return ctx


def hello_bytes(sni: str, hello: str, version: str) -> bytes:
    """The first flight this module sends for these settings (tests measure it)."""
    return _first_flight(tls_context(hello, version), sni)


class PortPicker:
    """Source ports never used twice by one probe: a censor that remembers a
    3-tuple or a 4-tuple must not see a retry as the same connection."""

    def __init__(self, low: int = 32768, high: int = 60999, seed: int | None = None) -> None:
        self.low, self.high = low, high
        self.used: set[int] = set()
        self._rand = random.Random(seed)

    def bind(self, sock: socket.socket, family: int) -> int:
        any_addr = "0.0.0.0" if family == socket.AF_INET else "::"
        for _ in range(64):
            port = self._rand.randint(self.low, self.high)
            if port in self.used:
                continue
            try:
                sock.bind((any_addr, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    continue
                raise
            self.used.add(port)
            return port
        sock.bind((any_addr, 0))
        port = int(sock.getsockname()[1])
        self.used.add(port)
        return port


def _exchange(sock: socket.socket, out: ssl.MemoryBIO, deadline: float) -> bytes:
    """Sends what TLS wrote, then waits (until ``deadline``) for what comes; b"" on close."""
    pending = out.read()
    if pending:
        sock.sendall(pending)
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    sock.settimeout(left)
    return sock.recv(65536)


def _ssl_kind(exc: ssl.SSLError, first: bytes) -> tuple[str, str]:
    if first and first[0] not in _TLS_RECORD_TYPES:
        return NON_TLS, f"not TLS: {first[:60]!r}"
    reason = str(getattr(exc, "reason", "") or exc)
    if "ALERT" in reason.upper():
        return ALERT, reason.lower()
    if first:
        return NON_TLS, f"bad TLS reply ({reason.lower()}): {first[:60]!r}"
    return ERROR, reason.lower()


def _os_kind(exc: OSError, connected: bool) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return REFUSED
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return RST
    if isinstance(exc, TimeoutError):
        return TIMEOUT
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return UNREACHABLE
    if exc.errno == errno.ECONNRESET:
        return RST
    return ERROR if not connected else RST


def attempt(
    addr: str,
    port: int,
    sni: str,
    *,
    mark: int,
    timeout: float,
    hello: str = CLASSIC,
    version: str = ANY_VERSION,
    fetch: int = 0,
    ports: PortPicker | None = None,
) -> Outcome:
    """Connect to ``addr``:``port`` from a fresh source port whose packets carry
    ``mark``, handshake with ``sni``, then with ``fetch`` > 0 read up to that many
    bytes of ``GET /``."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    deadline = time.monotonic() + timeout
    sock = socket.socket(family, socket.SOCK_STREAM)
    sport = 0
    first = b""
    connected = False
    try:
        if mark:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        sport = (ports or PortPicker()).bind(sock, family)
        sock.settimeout(timeout)
        sock.connect((addr, port))
        connected = True
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = tls_context(hello, version).wrap_bio(inc, out, server_hostname=sni)

        def pump() -> bool:
            """Sends what TLS wrote, reads what came; False on a clean close."""
            nonlocal first
            data = _exchange(sock, out, deadline)
            if not data:
                return False
            if len(first) < 64:
                first += data[: 64 - len(first)]
            inc.write(data)
            return True

        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if not pump():
                    kind = CLOSED if not first else NON_TLS
                    detail = "closed before the handshake ended"
                    if first and first[0] not in _TLS_RECORD_TYPES:
                        detail = f"not TLS: {first[:60]!r}"
                    return Outcome(kind, detail, sport)
        out_data = out.read()
        if out_data:
            sock.sendall(out_data)
        if fetch <= 0:
            return Outcome(OK, f"TLS {obj.version()}", sport)
        return _fetch(sock, obj, inc, out, sni, fetch, deadline, sport)
    except ssl.SSLError as e:
        kind, detail = _ssl_kind(e, first)
        return Outcome(kind, detail, sport)
    except OSError as e:
        kind = _os_kind(e, connected)
        where = "connect" if not connected else "handshake"
        return Outcome(kind, f"{where}: {e.strerror or type(e).__name__}", sport)
    finally:
        sock.close()


def _fetch(
    sock: socket.socket,
    obj: ssl.SSLObject,
    inc: ssl.MemoryBIO,
    out: ssl.MemoryBIO,
    sni: str,
    want: int,
    deadline: float,
    sport: int,
) -> Outcome:
    """``GET /`` and read until ``want`` bytes, the end, or a stall (a freeze)."""
    version = obj.version()
    obj.write(f"GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode("ascii"))
    got = 0
    try:
        while got < want:
            try:
                got += len(obj.read(65536))
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                break
            data = _exchange(sock, out, deadline)
            if not data:
                break
            inc.write(data)
    except TimeoutError:
        if got == 0:
            return Outcome(TIMEOUT, "no reply to GET", sport, got)
        return Outcome(FREEZE, f"stalled after {got} bytes", sport, got)
    except (ssl.SSLError, OSError) as e:
        # A server that closes with unread bytes resets: after a reply that is an end.
        if got:
            return Outcome(OK, f"TLS {version}, {got} bytes, then {type(e).__name__}", sport, got)
        return Outcome(RST, f"fetch: {type(e).__name__}", sport, got)
    return Outcome(OK, f"TLS {version}, {got} bytes", sport, got)
