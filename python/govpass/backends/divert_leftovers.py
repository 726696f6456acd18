"""What divert handles of crashed runs leave behind on Linux, and its removal.

On Linux a process killed with SIGKILL leaves its TC programs attached. For up
to 3 s they still divert into a ring nobody reads (new connections stall until
a retransmission), then pass everything (libebpfdivert's owner heartbeat). At
start the divert service detaches such leftovers: libebpfdivert's registry
reaper, plus a sweep for the ones it cannot see (see :func:`sweep_orphans`).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from govpass import host_os

TC_PROGRAM_PREFIX = "tc_divert_"  # libebpfdivert's cls_bpf programs


def live_bpf_prog_ids(proc: Path = Path("/proc")) -> set[int] | None:
    """Ids of the BPF programs some process still holds a descriptor to; None when
    some process's descriptors could not be read (then nothing can be called orphaned)."""
    ids: set[int] = set()
    for fdinfo in proc.glob("[0-9]*/fdinfo/*"):
        try:
            text = fdinfo.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            continue  # the descriptor or the process went away meanwhile
        except OSError:
            return None  # e.g. EACCES without CAP_SYS_PTRACE: unknown owners
        for row in text.splitlines():
            if row.startswith("prog_id:"):
                with suppress(ValueError):
                    ids.add(int(row.split()[1]))
    return ids


def orphaned_filters(
    filters: dict[tuple[str, str], list[dict[str, Any]]], live: set[int]
) -> list[tuple[str, str, int, str]]:
    """From `tc -j filter show` output per (interface, hook): the libebpfdivert
    filters whose program no process holds, as (interface, hook, pref, handle)."""
    out = []
    for (ifname, hook), entries in sorted(filters.items()):
        for entry in entries:
            options = entry.get("options") or {}
            prog = options.get("prog") or {}
            if entry.get("kind") != "bpf" or "handle" not in options:
                continue
            if not str(prog.get("name", "")).startswith(TC_PROGRAM_PREFIX):
                continue
            if prog.get("id") in live:
                continue
            out.append((ifname, hook, int(entry["pref"]), str(options["handle"])))
    return out


def sweep_orphans(run: Callable[..., Any] = subprocess.run) -> list[str]:
    """Linux: detach the TC programs of divert handles whose process died.

    libebpfdivert's own reaper (``EBPFDivert.unregister()``, also run on every
    open) only knows handles recorded in its registry pinned under
    /sys/fs/bpf, which is missing where bpffs is not mounted (e.g. under
    ``ip netns exec``, which mounts a fresh /sys). A libebpfdivert program that
    no process holds any more can only be such a leftover. They already pass
    everything (their owner's heartbeat is gone), but still run per packet.
    Nothing is removed unless every process's descriptors could be read (a
    process in another PID namespace sharing this network namespace stays
    invisible, though: run one divert program per namespace).
    """
    if shutil.which("tc") is None:
        return []
    filters: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _, ifname in socket.if_nameindex():
        for hook in ("ingress", "egress"):
            res = run(
                ["tc", "-j", "filter", "show", "dev", ifname, hook],
                capture_output=True,
                text=True,
                check=False,
            )
            with suppress(ValueError):
                filters[(ifname, hook)] = json.loads(res.stdout or "[]")
    live = live_bpf_prog_ids()
    if live is None:
        return []
    removed = []
    for ifname, hook, pref, handle in orphaned_filters(filters, live):
        argv = ["tc", "filter", "del", "dev", ifname, hook, "protocol", "all"]
        argv += ["pref", str(pref), "handle", handle, "bpf"]
        if run(argv, capture_output=True, text=True, check=False).returncode == 0:
            removed.append(f"{ifname} {hook} pref {pref} handle {handle}")
    return removed


def clean_leftovers(log: Callable[[str], None]) -> None:
    """Linux: remove what divert handles of crashed runs left attached."""
    if not host_os.is_linux():
        return
    try:
        from pydivert import EBPFDivert

        EBPFDivert.unregister()
        removed = sweep_orphans()
    except Exception as e:  # best effort: a failure here must not stop the run
        log(f"could not clean leftover divert programs: {type(e).__name__}: {e}")
        return
    if removed:
        log(
            f"removed {len(removed)} divert program(s) left by a dead process: {'; '.join(removed)}"
        )
