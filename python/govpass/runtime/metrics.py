"""The counters of `govpass stats` for Prometheus: ``GET /metrics`` on ``--metrics``.

The runtime's loop (:mod:`.service`) hands every stats dict it gets from the
service to :meth:`MetricsServer.update`; a scrape renders the latest one in the
text exposition format, version 0.0.4. Counters are ``govpass_<key>_total``,
values of the moment (``*_now``, ``*_peak``, ``workers``, hosts known)
``govpass_<key>``; fail-open reasons are one counter with a ``reason`` label.

Keys and label values come from the run directory's state files, which the
unprivileged workers write: a key that is not a plain lower-case name is left
out, label values are escaped and cut short, and the number of series per
family is bounded. The server answers ``GET /metrics`` only (404 for another
path, the standard library's 501 for another method), reads at most
:data:`MAX_REQUEST` bytes of a request, gives a client :data:`CLIENT_TIMEOUT`
seconds, serves at most :data:`MAX_CLIENTS` at once and logs nothing a client
sent. Its threads are daemon threads: a client that sends nothing does not hold
up the stop.
"""

from __future__ import annotations

import io
import math
import os
import re
import socket
import threading
import weakref
from collections.abc import Callable
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any

from govpass.errors import GovpassError
from govpass.runtime.status import MAIN_KEYS, TARGETING_KEYS
from govpass.safetext import text
from govpass.settings import listen_address

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PATH = "/metrics"
MAX_REQUEST = 8192  # bytes of a request line and headers read
CLIENT_TIMEOUT = 5.0  # seconds a client may take to send its request
MAX_CLIENTS = 8  # connections served at once; more are closed at once
MAX_LABEL = 128  # characters of a label value
MAX_SERIES = 256  # samples of one labelled family (fail-open reasons, strategies)
MAX_KEYS = 512  # plain counters and gauges

_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
# Values of the moment rather than counts since the start.
GAUGES = frozenset({"workers", "strategy_hosts", "strategy_unfixable", "auto_counting"})
# Keys rendered as labelled families below, not as plain numbers.
LABELLED = frozenset({"fail_open", "strategy_counts", "kernel_split_state"})
HELP = dict((*MAIN_KEYS, *TARGETING_KEYS))


def is_gauge(key: str) -> bool:
    return key in GAUGES or key.endswith(("_now", "_peak"))


def metric_name(key: str) -> str:
    return f"govpass_{key}" if is_gauge(key) else f"govpass_{key}_total"


def escape_label(value: str, limit: int = MAX_LABEL) -> str:
    """A label value as the format writes it between quotes: made one visible line
    as for a log (govpass.safetext: control and invisible characters as ``\\xNN``,
    at most `limit` characters), then backslash and quote escaped."""
    return text(value, limit).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: Any) -> str | None:
    """A sample value, or None for what is no finite number (bools included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return None


def _family(name: str, kind: str, help_text: str, samples: list[str]) -> list[str]:
    return [f"# HELP {name} {_escape_help(help_text)}", f"# TYPE {name} {kind}", *samples]


def render(stats: dict[str, Any]) -> str:
    """`stats` (a service's counters, as ``govpass stats`` has them) in the text format."""
    lines: list[str] = []
    keys = [k for k in sorted(stats) if k not in LABELLED and _KEY.match(k)]
    for key in keys[:MAX_KEYS]:
        value = _number(stats[key])
        if value is None:
            continue
        name = metric_name(key)
        kind = "gauge" if is_gauge(key) else "counter"
        help_text = HELP.get(key, key.replace("_", " "))
        lines += _family(name, kind, help_text, [f"{name} {value}"])
    fails = stats.get("fail_open")
    samples = []
    if isinstance(fails, dict):
        for reason in sorted(fails, key=str)[:MAX_SERIES]:
            if (value := _number(fails[reason])) is not None:
                samples.append(
                    f'govpass_fail_open_total{{reason="{escape_label(str(reason))}"}} {value}'
                )
    lines += _family("govpass_fail_open_total", "counter", "flows failed open, by reason", samples)
    counts = stats.get("strategy_counts")
    if isinstance(counts, dict):
        samples = []
        for key in sorted(counts, key=str)[:MAX_SERIES]:
            if (value := _number(counts[key])) is None:
                continue
            # "PROFILE:STRATEGY" for an auto [[profile]] (profile names hold no ':')
            profile, _, strategy = str(key).rpartition(":")
            labels = f'profile="{escape_label(profile)}",strategy="{escape_label(strategy)}"'
            samples.append(f"govpass_strategy_counts{{{labels}}} {value}")
        lines += _family(
            "govpass_strategy_counts", "gauge", "strategy auto: hosts at each strategy", samples
        )
    state = stats.get("kernel_split_state")
    if isinstance(state, str):
        sample = f'govpass_kernel_split_info{{state="{escape_label(state)}"}} 1'
        lines += _family("govpass_kernel_split_info", "gauge", "kernel split: its state", [sample])
    return "\n".join(lines) + "\n"


class _Bounded:
    """A request's input, cut off after `limit` bytes (an end of input after that)."""

    def __init__(self, raw: io.BufferedIOBase, limit: int) -> None:
        self.raw = raw
        self.left = limit

    def readline(self, size: int = -1) -> bytes:
        return self._take(self.raw.readline, size)

    def read(self, size: int = -1) -> bytes:
        return self._take(self.raw.read, size)

    def _take(self, reader: Callable[[int], bytes], size: int) -> bytes:
        if self.left <= 0:
            return b""
        data = reader(self.left if size < 0 else min(size, self.left))
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.raw.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    raw_requestline: bytes  # set by http.server before parse_request
    timeout = CLIENT_TIMEOUT
    server_version = "govpass"
    default_request_version = "HTTP/1.0"  # an error answer has a status line too

    def setup(self) -> None:
        super().setup()
        self.rfile = _Bounded(self.rfile, MAX_REQUEST)  # type: ignore[assignment]

    def parse_request(self) -> bool:
        line = self.raw_requestline
        # Cut at MAX_REQUEST (or the client's end), or HTTP/0.9 (no version: no headers).
        if not line.endswith(b"\n") or len(line.split()) == 2:
            self.command, self.requestline = "", ""
            self.request_version = self.default_request_version
            self.send_error(414 if not line.endswith(b"\n") else 400)
            return False
        return super().parse_request()

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != PATH:
            self._answer(404, b"not found\n", "text/plain; charset=utf-8")
            return
        self._answer(200, self.server.exporter.scrape(), CONTENT_TYPE)

    def _answer(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # what a client sent never reaches the log


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a stuck client does not hold up server_close()

    def __init__(self, address: tuple[str, int], exporter: MetricsServer) -> None:
        self.exporter = exporter
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer's own looks the host's name up (getfqdn): no resolver at start.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # socketserver's prints a traceback to stderr: a client's doing stays out of it

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Server6(_Server):
    address_family = socket.AF_INET6


def _close_in_child(ref: weakref.ref[_Server]) -> None:
    """A forked worker does not keep the listening socket (the port stays the parent's)."""
    server = ref()
    if server is not None:
        with suppress(OSError):
            server.socket.close()


class MetricsServer:
    """``GET /metrics`` on a thread, serving the stats last given to :meth:`update`."""

    def __init__(self, host: str, port: int, stats: dict[str, Any] | None = None) -> None:
        self._lock = threading.Lock()
        self._stats: dict[str, Any] = dict(stats or {})
        cls = _Server6 if ":" in host else _Server
        self._server = cls((host, port), self)
        if hasattr(os, "register_at_fork"):  # the NFQUEUE daemon forks its workers
            ref = weakref.ref(self._server)
            os.register_at_fork(after_in_child=lambda: _close_in_child(ref))
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="govpass-metrics",
            daemon=True,
        )

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the port the kernel chose for port 0)."""
        return self._server.server_name, self._server.server_port

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}{PATH}" if ":" in host else f"http://{host}:{port}{PATH}"

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def update(self, stats: dict[str, Any]) -> None:
        """The counters the next scrape shows (the service's dict, not changed after)."""
        with self._lock:
            self._stats = stats

    def scrape(self) -> bytes:
        with self._lock:
            stats = self._stats
        return render(stats).encode("utf-8", "replace")

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(2)
        self._server.server_close()


def serve(setting: str, stats: dict[str, Any]) -> MetricsServer | None:
    """The server for the ``metrics`` setting's value (None when off), started;
    a bind that fails is one line (GovpassError)."""
    address = listen_address(setting)
    if address is None:
        return None
    try:
        return MetricsServer(*address, stats=stats).start()
    except OSError as e:
        reason = text(e.strerror or str(e), 200)
        raise GovpassError(f"cannot serve metrics on {text(setting, 80)}: {reason}") from None
