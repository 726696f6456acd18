"""Runs the kernel split program (:mod:`govpass.bpf.ksplit`, C) through
BPF_PROG_TEST_RUN inside a network namespace of its own, and reports what came
out: the program's return value, the packet as it left the program, the copies
it sent with ``bpf_clone_redirect`` and the program's counters.

Why a namespace: in a test run the program's packet belongs to the loopback
device of the calling process's namespace, and ``bpf_clone_redirect`` really
transmits the first segment there. A fresh namespace keeps that copy away from
the host and lets an AF_PACKET socket on its ``lo`` catch it.

:func:`run_isolated` (for tests) starts ``unshare -n python3 ksplit_probe.py``,
which reads a request (JSON) on stdin and writes the answer (JSON) on stdout::

    {"params": {"chunk": 5, "max_payload": 1500, "max_seg_payload": 1460, "ports": [443],
                "mark": 1073741824, "local": true, "l2": 14},
     "runs": [{"frame": "<hex>", "mark": 0, "gso_segs": 0}, ...],
     "lo_is_up": true}

    {"runs": [{"retval": -1, "out": "<hex>", "clones": ["<hex>", ...],
               "counters": {"split": 1, "unsplit": 0, ...}}, ...],
     "late": []}

Each run's counters are the totals after that run (one program for all runs).
Run directly, it refuses to start in a namespace with other interfaces than
``lo`` (the host's, most likely).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
from typing import Any

from govpass.bpf import ksplit
from govpass.bpf import syscall as sc

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
SKB_SIZE = 192  # sizeof(struct __sk_buff)
SKB_MARK, SKB_GSO_SEGS = 8, 164  # offsets of the fields a test run takes from ctx
OUT_SIZE = 4096  # room for any output packet (frames are at most ~1600 bytes)
LATE_WAIT = 0.1  # seconds to wait, after the last run, for copies that were late


def lo_up() -> None:
    """Bring ``lo`` up (SIOCSIFFLAGS), without iproute2."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack_from("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def skb_ctx(mark: int = 0, gso_segs: int = 0) -> bytes:
    """A ``struct __sk_buff`` for the test run's ``ctx_in``, or b"" when all zero."""
    if not mark and not gso_segs:
        return b""
    ctx = bytearray(SKB_SIZE)
    struct.pack_into("=I", ctx, SKB_MARK, mark)
    struct.pack_into("=I", ctx, SKB_GSO_SEGS, gso_segs)
    return bytes(ctx)


def drain(sock: socket.socket, wait: float = 0) -> list[bytes]:
    """The packets sent out of ``lo`` so far (each seen once, as outgoing; the
    copy looped back in is left out), waiting up to ``wait`` seconds for more.

    ``lo`` has no queue: a copy sent by the program reaches the socket before
    the test run returns, so no wait is needed after a run."""
    sent: list[bytes] = []
    while select.select([sock], [], [], wait)[0]:
        try:
            data, addr = sock.recvfrom(65535)
        except OSError as e:  # bound while lo is down: reported once, then gone
            if e.errno != errno.ENETDOWN:
                raise
            continue
        if addr[2] == PACKET_OUTGOING:
            sent.append(data)
    return sent


def probe(
    params: dict[str, Any], runs: list[dict[str, Any]], lo_is_up: bool = True
) -> dict[str, Any]:
    """The test runs, in this process's network namespace: {"runs": [...], "late":
    [copies seen only after the last run, hex]}. With ``lo_is_up`` false, ``lo``
    stays down (as a new namespace has it), so the program cannot send its copy."""
    p = ksplit.Params(
        chunk=params["chunk"],
        max_payload=params["max_payload"],
        max_seg_payload=params["max_seg_payload"],
        ports=tuple(params["ports"]),
        mark=params["mark"],
        local=params["local"],
        l2=params.get("l2", 14),
    )
    if lo_is_up:
        lo_up()
    results: list[dict[str, Any]] = []
    with (
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as sock,
        ksplit.Loaded(p) as loaded,
    ):
        sock.bind(("lo", ETH_P_ALL))
        drain(sock)
        for run in runs:
            ctx = skb_ctx(run.get("mark", 0), run.get("gso_segs", 0))
            res = sc.prog_test_run(
                loaded.prog_fd, bytes.fromhex(run["frame"]), out_size=OUT_SIZE, ctx=ctx
            )
            retval = res.retval - 2**32 if res.retval >= 2**31 else res.retval
            results.append(
                {
                    "retval": retval,
                    "out": res.data.hex(),
                    "clones": [c.hex() for c in drain(sock)],
                    "counters": loaded.counters(),
                }
            )
        late = [c.hex() for c in drain(sock, LATE_WAIT)]
    return {"runs": results, "late": late}


def missing_needs() -> str | None:
    """What :func:`run_isolated` needs and this process lacks, or None."""
    if os.geteuid() != 0:
        return "eBPF tests need root (bpf(2) program loads, a network namespace)"
    if shutil.which("unshare") is None:
        return "the kernel split tests need unshare(1) (util-linux)"
    return None


def run_isolated(
    params: dict[str, Any],
    runs: list[dict[str, Any]],
    *,
    lo_is_up: bool = True,
    timeout: float = 60,
) -> list[dict[str, Any]]:
    """:func:`probe`'s runs, in a new network namespace (``unshare -n``, needs
    root). Raises RuntimeError when the probe fails or a copy came late (the
    runs' copies could not be told apart)."""
    request = json.dumps({"params": params, "runs": runs, "lo_is_up": lo_is_up})
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, os.path.abspath(__file__)],
        input=request,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ksplit probe failed ({proc.returncode}):\n{proc.stderr}")
    answer = json.loads(proc.stdout)
    if answer["late"]:
        raise RuntimeError(f"ksplit probe: {len(answer['late'])} copies sent late")
    results: list[dict[str, Any]] = answer["runs"]
    return results


def main() -> int:
    others = [name for _, name in socket.if_nameindex() if name != "lo"]
    if others:
        print(
            f"ksplit_probe: not in a namespace of its own (interfaces {others}); "
            "run it through `unshare -n`",
            file=sys.stderr,
        )
        return 2
    request = json.load(sys.stdin)
    json.dump(probe(request["params"], request["runs"], request.get("lo_is_up", True)), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
