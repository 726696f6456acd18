"""A stand-in for the govpass daemon: log every queued packet, accept it with the mark.

Run inside the client namespace:  python3 nfq_consumer.py QUEUE MARK LOGFILE [--hold]

Each queued packet becomes one JSON line in LOGFILE.  With --hold, the first
packet of each flow is kept un-verdicted until a second packet of the same flow
arrives (or HOLD_TIMEOUT_S passes); that proves the watch bit keeps the flow in
the queue while the daemon is still collecting.  "READY" is printed to stdout
once the queue is bound.
"""

from __future__ import annotations

import json
import select
import signal
import struct
import sys
import time
from typing import Any

from netfilterqueue import NetfilterQueue

HOLD_TIMEOUT_S = 2.0


def parse(data: bytes) -> dict[str, Any]:
    version = data[0] >> 4
    if version == 4:
        ihl = (data[0] & 0x0F) * 4
        proto = data[9]
        src, dst = data[12:16].hex(), data[16:20].hex()
        tcp = data[ihl:]
    else:
        proto = data[6]
        src, dst = data[8:24].hex(), data[24:40].hex()
        tcp = data[40:]
    info: dict[str, Any] = {"v": version, "proto": proto, "src": src, "dst": dst}
    if proto != 6 or len(tcp) < 20:
        return info
    sport, dport, seq = struct.unpack("!HHI", tcp[:8])
    doff = (tcp[12] >> 4) * 4
    payload = tcp[doff:]
    info.update(
        sport=sport,
        dport=dport,
        seq=seq,
        flags=tcp[13],
        payload_len=len(payload),
        head=payload[:6].hex(),
    )
    return info


def main() -> int:
    queue_num, mark, logfile = int(sys.argv[1]), int(sys.argv[2], 0), sys.argv[3]
    hold = "--hold" in sys.argv[4:]
    log = open(logfile, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    held: dict[int, tuple[Any, float, dict[str, Any]]] = {}  # sport -> (packet, since, info)
    seen_flows: set[int] = set()
    stop = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    def release(pkt: Any, how: str, info: dict[str, Any]) -> None:
        pkt.set_mark(mark)
        pkt.accept()
        log.write(json.dumps({**info, "verdict": how, "t": time.monotonic()}) + "\n")

    def on_packet(pkt: Any) -> None:
        info = parse(pkt.get_payload())
        info["mark_in"] = pkt.get_mark()
        sport = info.get("sport", -1)
        if hold and sport not in seen_flows:
            seen_flows.add(sport)
            pkt.retain()
            held[sport] = (pkt, time.monotonic(), info)
            return
        if sport in held:
            first, _since, first_info = held.pop(sport)
            release(first, "held-until-next", first_info)
        release(pkt, "accept", info)

    nfq = NetfilterQueue()
    nfq.bind(queue_num, on_packet)
    fd = nfq.get_fd()
    print("READY", flush=True)
    try:
        while not stop:
            readable, _, _ = select.select([fd], [], [], 0.05)
            if readable:
                nfq.run(block=False)
            now = time.monotonic()
            for sport, (pkt, since, info) in list(held.items()):
                if now - since > HOLD_TIMEOUT_S:
                    del held[sport]
                    release(pkt, "held-timeout", info)
    finally:
        for pkt, _since, info in held.values():
            release(pkt, "held-at-exit", info)
        nfq.unbind()
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
