"""Rendering of daemon counters: a rich table for terminals, key=value lines otherwise."""

from __future__ import annotations

from typing import Any

from rich.table import Table

MAIN_KEYS = (
    ("flows_now", "flows tracked"),
    ("flows", "flows seen"),
    ("splits", "splits"),
    ("resplits", "retransmissions re-split"),
    ("segments", "segments sent"),
    ("held_packets_now", "packets held"),
    ("held_bytes_now", "bytes held"),
    ("held_bytes_peak", "bytes held (peak)"),
    ("packets", "packets queued"),
    ("queue_dropped", "kernel queue drops"),
    ("user_dropped", "netlink drops"),
    ("inject_errors", "injection errors"),
)


def table(stats: dict[str, Any], title: str = "govpass") -> Table:
    t = Table(title=title, show_header=True, header_style="bold")
    t.add_column("counter")
    t.add_column("value", justify="right")
    for key, label in MAIN_KEYS:
        if key in stats:
            t.add_row(label, f"{int(stats[key]):,}")
    fails = stats.get("fail_open", {})
    for reason, n in sorted(fails.items()):
        if n:
            t.add_row(f"fail-open: {reason}", f"{int(n):,}", style="yellow")
    if not any(fails.values()):
        t.add_row("fail-open", "0")
    return t


def line(stats: dict[str, Any]) -> str:
    parts = [f"{key}={int(stats[key])}" for key, _ in MAIN_KEYS if key in stats]
    fails = stats.get("fail_open", {})
    parts.append("fail_open=" + ",".join(f"{r}:{n}" for r, n in sorted(fails.items()) if n))
    return " ".join(parts)
