"""Packets that matched govpass's queue rules but never got to a worker.

The rules queue with ``bypass`` and every queue is set to fail open, so a packet
passes on unmodified (and a hello unsplit) when no worker is bound to its queue
(stopped and killed by the watchdog, crashed, being started again) or when the
queue holds ``queue-len`` packets. The kernel counts neither case itself:

* ``/proc/net/netfilter/nfnetlink_queue`` has, per bound queue, ``queue_total``
  (packets waiting for a verdict now), ``queue_dropped`` and ``user_dropped``
  (drops; a fail-open queue takes neither path, so they stay at zero here) and
  ``id_sequence``: the id of the last packet the queue accepted. It counts every
  packet the queue took since its process bound it, and none that passed by it
  because the queue was full; a queue nobody has bound has no line at all.
* The packet counters of the queue rules (``iptables-save -c``, nft's ``counter``)
  count every packet sent to a queue, whether it was taken or passed by.

So rule packets minus the sum of ``id_sequence`` over every queue instance is what
passed by the queues. :class:`BypassCount` keeps that sum across restarts: a
queue whose process changed (another netlink port id) or that vanished has its
last ``id_sequence`` moved into a total. What it does not see: packets a worker's
queue took after the parent last looked and before the worker crashed (the
parent looks at every watchdog check, at most 0.25 s apart, and just before it
kills a hung worker); packets the rules counted between the last look and their
reinstallation by someone else (the daemon looks just before it reinstalls them
itself); and packets the queue took
but could not hand to a stopped worker's full socket buffer (the kernel accepts
those too, after giving them an id). Each errs towards a smaller number: the
published count grows only, and never by a packet a worker received.
"""

from __future__ import annotations

from dataclasses import dataclass

PROC_QUEUES = "/proc/net/netfilter/nfnetlink_queue"

# Columns of a line: queue number, peer port id, queue_total, copy mode, copy range,
# queue_dropped, user_dropped, id_sequence, 1.
_COLUMNS = 8
_MAX_COUNTER = 2**64  # every column is a kernel u32/u64: anything past that is not one


@dataclass(frozen=True)
class QueueRow:
    portid: int
    queued: int
    queue_dropped: int
    user_dropped: int
    id_sequence: int


def parse_queue_table(text: str) -> dict[int, QueueRow]:
    """Bound queues by number; a line that is short, or has a column that is not a
    decimal number, is left out (its queue then counts as unknown, not as zero)."""
    out: dict[int, QueueRow] = {}
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < _COLUMNS:
            continue
        try:
            nums = [_counter(c) for c in cols[:_COLUMNS]]
        except ValueError:
            continue
        out[nums[0]] = QueueRow(nums[1], nums[2], nums[5], nums[6], nums[7])
    return out


def _counter(col: str) -> int:
    if not col.isascii() or not col.isdigit():
        raise ValueError(col)
    value = int(col)
    if value >= _MAX_COUNTER:
        raise ValueError(col)
    return value


def read_queue_table(path: str = PROC_QUEUES) -> dict[int, QueueRow] | None:
    """The table now, or None when it cannot be read (no nfnetlink_queue module)."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return parse_queue_table(f.read(1 << 20))
    except OSError:
        return None


class Accumulator:
    """The running total of a counter that starts again from zero now and then
    (reinstalled rules): a sample smaller than the last one starts a new run."""

    def __init__(self) -> None:
        self._base = 0
        self._last = 0

    def restart(self) -> None:
        """The counter starts again from zero now (what it counted stays)."""
        self._base += self._last
        self._last = 0

    def sample(self, value: int) -> int:
        if value < self._last:
            self._base += self._last
        self._last = value
        return self._base + value


class BypassCount:
    """Packets of govpass's queue rules that no queue took (see the module doc)."""

    def __init__(self, queues: range) -> None:
        self.queues = queues
        self._instances: dict[int, tuple[int, int]] = {}  # queue -> (port id, id_sequence)
        self._gone = 0  # id_sequence totals of queue instances that ended
        self._rules = Accumulator()
        self.value: int | None = None  # None until both counters could be read once

    def rules_replaced(self) -> None:
        """The rules were installed again: their counters start from zero."""
        self._rules.restart()

    def observe_queues(self, table: dict[int, QueueRow] | None) -> None:
        """Notes each queue's instance and id_sequence (None: the table was unreadable,
        nothing is concluded)."""
        if table is None:
            return
        for q in self.queues:
            row = table.get(q)
            known = self._instances.get(q)
            if known is not None and (
                row is None or row.portid != known[0] or row.id_sequence < known[1]
            ):
                self._gone += known[1]  # that instance ended; its count is final
                del self._instances[q]
            if row is not None:
                self._instances[q] = (row.portid, row.id_sequence)

    def observe(self, rule_packets: int | None, table: dict[int, QueueRow] | None) -> int | None:
        """Takes the rules' packet count (read first: a packet is counted by its rule
        before a queue takes it) and the queue table; returns the count, or None
        while either has never been readable."""
        self.observe_queues(table)
        if rule_packets is None or table is None:
            return self.value
        taken = self._gone + sum(seq for _, seq in self._instances.values())
        passed = max(0, self._rules.sample(rule_packets) - taken)
        self.value = passed if self.value is None else max(self.value, passed)
        return self.value
