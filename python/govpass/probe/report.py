"""The probe's results for people (a rich table) and programs (one JSON object a host).

Host names come from the command line and details hold bytes servers sent: both are
escaped (control and other non-printable characters as ``\\xNN``) before they reach
a terminal, and rich markup is never interpreted in them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from govpass import safetext
from govpass.probe.search import FIXED, OK, HostResult

MAX_DETAIL = 200


def escape(text: str, limit: int = MAX_DETAIL) -> str:
    """Printable text for the report (:func:`govpass.safetext.text`)."""
    return safetext.text(text, limit)


def as_json(res: HostResult) -> dict[str, Any]:
    """The issue's shape: host, verdict, strategy (run flags), reason, tried."""
    return {
        "host": escape(res.host),
        "address": res.addr,
        "verdict": res.verdict,
        "strategy": res.strategy.flags if res.strategy is not None else "",
        "reason": escape(res.reason),
        "steps": [{"step": s, "result": escape(t)} for s, t in res.steps],
        "tried": [{k: escape(v) for k, v in t.as_dict().items()} for t in res.tried],
    }


def json_lines(results: Sequence[HostResult]) -> str:
    return "".join(json.dumps(as_json(r), ensure_ascii=True) + "\n" for r in results)


def exit_code(results: Sequence[HostResult]) -> int:
    """0 when every host is ok or fixed, else 1."""
    return 0 if results and all(r.verdict in (OK, FIXED) for r in results) else 1


_STYLE = {"ok": "green", "fixed": "yellow", "unfixable": "red"}


def table(results: Sequence[HostResult]) -> Table:
    t = Table(title="govpass probe", show_lines=True)
    for col in ("host", "verdict", "strategy", "steps", "tried"):
        t.add_column(col, overflow="fold")
    for r in results:
        steps = "\n".join(f"{s}: {escape(x)}" for s, x in r.steps)
        tried = "\n".join(f"{x.strategy.label}: {x.result}" for x in r.tried) or "-"
        strategy = r.strategy.flags if r.strategy is not None else "-"
        t.add_row(
            Text(escape(r.host)),
            Text(r.verdict, style=_STYLE.get(r.verdict, "")),
            Text(strategy),
            Text(steps),
            Text(tried),
        )
    return t


def verdict_lines(results: Sequence[HostResult]) -> list[str]:
    """One plain line per host (what the table says, for a pipe or a log)."""
    out = []
    for r in results:
        flags = f" ({r.strategy.flags})" if r.strategy is not None else ""
        out.append(f"{escape(r.host)}: {r.verdict}{flags}: {escape(r.reason)}")
    return out
