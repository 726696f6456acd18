"""TLS connection timeline for ci/bench_watchdog.py, run inside the lab's client namespace.

    python3 ci/bench_conn_timeline.py --host 203.0.113.2 --name bench.example \
        --cafile CA --seconds 10 --threads 8

Each thread opens fresh TCP+TLS connections one after another for ``seconds``; every
connection is recorded as ``[start, end, ok]`` in CLOCK_MONOTONIC seconds (the clock is
the same in every namespace, so the caller can line it up with its own events). Prints
one JSON object ``{"conns": [...]}``. Standalone: no govpass import.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import threading
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, default=443)
    ap.add_argument("--name", required=True)
    ap.add_argument("--cafile", required=True)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args()
    ctx = ssl.create_default_context(cafile=args.cafile)
    end = time.monotonic() + args.seconds
    conns: list[tuple[float, float, bool]] = []
    lock = threading.Lock()

    def loop() -> None:
        while (t0 := time.monotonic()) < end:
            ok = False
            try:
                with (
                    socket.create_connection((args.host, args.port), args.timeout) as raw,
                    ctx.wrap_socket(raw, server_hostname=args.name),
                ):
                    ok = True
            except (OSError, ssl.SSLError):
                pass
            with lock:
                conns.append((t0, time.monotonic(), ok))

    threads = [threading.Thread(target=loop) for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"conns": conns}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
