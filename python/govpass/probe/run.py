"""``govpass probe`` end to end: resolve, intercept, search each host."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from govpass.probe.attempt import Outcome, PortPicker, attempt
from govpass.probe.diagnose import Diagnosis
from govpass.probe.intercept import Marks, intercepting
from govpass.probe.resolve import Resolution, resolve
from govpass.probe.search import OK, PENDING, UNFIXABLE, Control, HostResult, Searcher, Try
from govpass.strategy import DEFAULT_LADDER, Strategy

DEFAULT_OTHER_SNI = "www.example.com"


@dataclass(frozen=True)
class ProbeOptions:
    port: int = 443
    connect: str | None = None
    controls: tuple[str, ...] = ()
    tries: int = 3
    timeout: float = 4.0
    max_wait: float = 180.0
    ladder: tuple[Strategy, ...] = DEFAULT_LADDER


def probe(
    hosts: Sequence[str],
    opts: ProbeOptions,
    marks: Marks,
    progress: Callable[[str], None] = lambda s: None,
    host_done: Callable[[], None] = lambda: None,
) -> list[HostResult]:
    resolved = {h: resolve(h, opts.port, opts.connect) for h in (*hosts, *opts.controls)}
    ports = PortPicker()
    with intercepting(marks, opts.port) as icp:
        current: list[Strategy | None] = [None]

        def tryer(t: Try) -> Outcome:
            if t.strategy is not None and t.strategy != current[0]:
                icp.use(t.strategy)
                current[0] = t.strategy
            mark = marks.plain if t.strategy is None else marks.split
            return attempt(
                t.addr,
                opts.port,
                t.sni,
                mark=mark,
                timeout=opts.timeout,
                hello=t.hello,
                version=t.version,
                fetch=t.fetch,
                ports=ports,
            )

        searcher = Searcher(
            tryer,
            opts.ladder,
            tries=opts.tries,
            max_wait=opts.max_wait,
            sleep=time.sleep,
            on_progress=progress,
        )
        controls: list[Control] = []
        notes: list[str] = []
        if opts.controls:
            progress("checking control hosts")
            given = [Control(n, a) for n in opts.controls if (a := resolved[n].addr) is not None]
            controls, notes = searcher.usable_controls(given)
            notes += [f"control {n}: cannot resolve" for n in opts.controls if not resolved[n].addr]
        searcher.other_sni = controls[0].name if controls else DEFAULT_OTHER_SNI
        # Every host's unsplit diagnosis first: without --control, the hosts that are
        # not blocked are the controls of the ladders that follow.
        diagnosed = [_diagnose(searcher, h, resolved[h]) for h in hosts]
        if not opts.controls:
            controls = [
                Control(r.host, r.addr, searcher.speaks(r.addr, r.host))
                for r, _ in diagnosed
                if r.verdict == OK and r.addr
            ]
        results = []
        for res, diag in diagnosed:
            if res.verdict == PENDING and diag is not None:
                others = [c for c in controls if c.name != res.host]
                searcher.controls = others
                res = searcher.fix(res, diag)
                checked = ", ".join(c.name for c in others) or "none (not cross-checked)"
                res.step("control", f"unblocked hosts checked: {checked}")
                res.steps += [("control", n) for n in notes]
            results.append(res)
            progress(f"{res.host}: {res.verdict}")
            host_done()
        if icp.errors:
            for res in results:
                res.step("engine", "; ".join(icp.errors))
    return results


def _diagnose(
    searcher: Searcher, host: str, where: Resolution
) -> tuple[HostResult, Diagnosis | None]:
    if where.addr is None:
        res = HostResult(host, None, UNFIXABLE, reason=f"cannot resolve: {where.error}")
        res.step("resolve", where.error)
        return res, None
    res, diag = searcher.diagnose(host, where.addr)
    res.steps.insert(0, ("resolve", _resolve_text(where)))
    return res, diag


def _resolve_text(where: Resolution) -> str:
    parts = [f"using {where.addr}"]
    if where.answers:
        parts.append(f"resolver: {', '.join(where.answers)}")
    elif where.error:
        parts.append(where.error)
    parts += list(where.warnings)
    return "; ".join(parts)
