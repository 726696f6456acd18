"""Sequential TLS handshake timer for ci/bench_lab.py, run inside the lab's client namespace.

    python3 ci/bench_lab_hs.py --host 203.0.113.2 --name bench.example --cafile CA -n 500

For each of ``n`` fresh TCP+TLS connections (no session resumption: a new SSLSocket
without a session each time) it times ``connect()`` start → TCP established → TLS
handshake done, with ``time.perf_counter_ns``. Prints one JSON object:
``{"connect_us": [...], "handshake_us": [...], "errors": N, "first_error": str}`` where
``handshake_us`` is the whole connect→handshake-done time (what curl calls
``time_appconnect``). Standalone on purpose: no govpass import in the timed process.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, default=443)
    ap.add_argument("--name", required=True, help="SNI and certificate name")
    ap.add_argument("--cafile", required=True)
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument(
        "--pause-ms",
        type=float,
        default=1.0,
        help="idle time between connections (lets each flow finish)",
    )
    args = ap.parse_args()

    ctx = ssl.create_default_context(cafile=args.cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    connect_us: list[float] = []
    handshake_us: list[float] = []
    errors = 0
    first_error = ""
    for _ in range(args.n):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(args.timeout)
        try:
            t0 = time.perf_counter_ns()
            sock.connect((args.host, args.port))
            t1 = time.perf_counter_ns()
            tls = ctx.wrap_socket(sock, server_hostname=args.name)
            t2 = time.perf_counter_ns()
            connect_us.append((t1 - t0) / 1000)
            handshake_us.append((t2 - t0) / 1000)
            # The client closes first with a FIN (SSLSocket.shutdown drops the TLS layer;
            # the rest, session tickets included, is drained raw) and so keeps the port in
            # TIME_WAIT: no 4-tuple is reused during a run. A close with unread tickets
            # would send a RST instead and free the port at once.
            tls.shutdown(socket.SHUT_WR)
            while tls.recv(65536):
                pass
            tls.close()
        except (OSError, ssl.SSLError) as exc:
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
            sock.close()
        if args.pause_ms > 0:
            time.sleep(args.pause_ms / 1000)
    print(
        json.dumps(
            {
                "connect_us": connect_us,
                "handshake_us": handshake_us,
                "errors": errors,
                "first_error": first_error,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
