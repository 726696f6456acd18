"""Rendering of daemon counters: a rich table for terminals, key=value lines otherwise."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.table import Table

from govpass.safetext import markup, text

MAIN_KEYS = (
    ("flows_now", "flows tracked"),
    ("flows", "flows seen"),
    ("splits", "splits"),
    ("kernel_split", "splits in the kernel"),
    ("resplits", "retransmissions re-split"),
    ("segments", "segments sent"),
    ("held_packets_now", "packets held"),
    ("held_bytes_now", "bytes held"),
    ("held_bytes_peak", "bytes held (peak)"),
    ("packets", "packets queued"),
    ("bypassed", "packets passed by the queues (no worker, or full)"),
    ("queue_dropped", "kernel queue drops"),
    ("user_dropped", "netlink drops"),
    ("inject_errors", "injection errors"),
)
# Counters shown once non-zero (targeting and auto-learning are optional; segments
# in verdicts need the Rust loop; verdict errors should stay at zero).
TARGETING_KEYS = (
    ("profile_pass", "flows passed by a profile"),
    ("watched", "flows watched (auto)"),
    ("auto_failures", "auto: failed flows"),
    ("auto_silent", "auto: of them silent after the hello"),
    ("auto_successes", "auto: working flows"),
    ("auto_learned", "auto: names learned"),
    ("auto_rejected", "auto: names refused (not host names)"),
    ("list_errors", "list reload errors"),
    ("strategy_hosts", "strategy auto: hosts known"),
    ("strategy_changes", "strategy auto: changes"),
    ("strategy_unfixable", "strategy auto: unfixable now"),
    ("strategy_rejected", "strategy auto: names refused"),
    ("quic_dropped", "QUIC Initials dropped (listed)"),
    ("verdict_sent", "segments sent in verdicts"),
    ("verdict_errors", "verdicts refused or lost"),
    ("kernel_unsplit", "kernel split: passed whole"),
    ("kernel_first_only", "kernel split: rest left to TCP"),
    ("kernel_dropped", "kernel split: dropped, TCP resends"),
    ("worker_restarts", "workers restarted"),
    ("watchdog_restarts", "of them hung (watchdog)"),
)


def _shown(stats: dict[str, Any]) -> list[tuple[str, str]]:
    extra = [(k, label) for k, label in TARGETING_KEYS if stats.get(k)]
    return [(k, label) for k, label in MAIN_KEYS if k in stats] + extra


def table(stats: dict[str, Any], title: str = "govpass") -> Table:
    t = Table(title=title, show_header=True, header_style="bold")
    t.add_column("counter")
    t.add_column("value", justify="right")
    for key, label in _shown(stats):
        t.add_row(label, f"{_int(stats[key]):,}")
    counts = stats.get("strategy_counts")
    if isinstance(counts, dict):
        for key, n in sorted(counts.items()):
            # "PROFILE:STRATEGY" for an auto [[profile]] (profile names hold no ':')
            profile, _, label = str(key).rpartition(":")
            where = f" (profile {markup(profile, 64)})" if profile else ""
            t.add_row(f"strategy auto{where}: hosts at {markup(label, 40)}", f"{_int(n):,}")
    fails = _fails(stats)
    for reason, n in sorted(fails.items()):
        if n:
            t.add_row(f"fail-open: {markup(reason, 60)}", f"{n:,}", style="yellow")
    if not any(fails.values()):
        t.add_row("fail-open", "0")
    if stats.get("kernel_split_state"):
        t.caption = f"kernel split: {markup(stats['kernel_split_state'])}"
    return t


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return 0


def _fails(stats: dict[str, Any]) -> dict[str, int]:
    """Fail-open counters by reason; the reasons come from state files: shown escaped."""
    fails = stats.get("fail_open", {})
    if not isinstance(fails, dict):
        return {}
    return {str(reason): _int(n) for reason, n in fails.items()}


def line(stats: dict[str, Any]) -> str:
    """``key=value`` counters; ``fail_open=reason:n,...`` only once a flow failed open."""
    parts = [f"{key}={_int(stats[key])}" for key, _ in _shown(stats)]
    fails = ",".join(f"{text(r, 60)}:{n}" for r, n in sorted(_fails(stats).items()) if n)
    if fails:
        parts.append(f"fail_open={fails}")
    return " ".join(parts)


IDLE_LOG_INTERVAL = 600.0  # seconds between two identical lines: the log shows it is alive


class ChangeLog:
    """Counter lines for a log (journal, file): one when a counter changed since the
    last line, else one every :data:`IDLE_LOG_INTERVAL` seconds. Every stats
    interval would be ~43 000 identical lines a day from an idle daemon."""

    def __init__(
        self,
        render: Callable[[dict[str, Any]], str] = line,
        idle_interval: float = IDLE_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.render = render
        self.idle_interval = idle_interval
        self.clock = clock
        self._last: str | None = None
        self._at = 0.0

    def due(self, stats: dict[str, Any]) -> str | None:
        """The line to log for ``stats`` now, or None."""
        rendered = self.render(stats)
        now = self.clock()
        if rendered == self._last and now - self._at < self.idle_interval:
            return None
        self._last, self._at = rendered, now
        return rendered


def running(config: Any, *extra: str) -> str:
    """The line a service logs once it runs: the split it makes, then its own words."""
    split = f"split-chunk={config.split_chunk} split-pos={','.join(config.split_pos) or '-'}"
    return " ".join(["running:", split, *extra])
