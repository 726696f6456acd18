"""`govpass lab`: show govpass at work against a censor, in throw-away network namespaces.

It builds client — censor — server namespaces (documentation addresses only), starts a
real TLS server and a censor, and connects to a listed name with every client found:
first without govpass (the censor blocks it), then with ``govpass run`` inside the client
namespace using the split flags given here. The client-side traffic goes to a pcap;
a table shows each outcome and the first segment sizes. Everything it made is removed
at the end, also on Ctrl-C or SIGTERM. Exit code 0 when every run with govpass passed.

No ``from __future__ import annotations`` here: ``with_settings`` copies this
command's parameters, and typer reads their ``Annotated`` options only from real
annotations, not from strings.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from govpass import config as config_mod
from govpass.cli import app
from govpass.cli.options import ENGINE_SETTINGS, with_settings
from govpass.errors import ConfigError, GovpassError

if TYPE_CHECKING:
    from govpass.lab import Lab

ALLOWED_NAME = "allowed.example"
TOOLS = ("ip", "iptables", "ip6tables", "tcpdump", "openssl")
START_TIMEOUT = 20.0


BOTH = ("firstpacket", "string")  # --censor both: the two classic DPI kinds


class Family(str, Enum):
    v4 = "4"
    v6 = "6"
    both = "both"


# What beats a censor that govpass's default split (a 5-byte first segment) does not,
# and why the default does not.
FIXES: dict[str, tuple[tuple[str, ...], str]] = {
    "string": (
        ("--split-pos", "midsld"),
        "it reads every packet, and a first segment of a few bytes leaves the name "
        "whole in the next one",
    ),
    "tspu": (
        ("--split-chunk", "1"),
        "it reassembles the next packets once the first segment looks like a TLS "
        "record header, which 5 bytes do and 1 byte does not",
    ),
    "dropsecond": (
        ("--split-chunk", "2", "--split-pos", "midsld"),
        "it reads the name from the first two packets and then silently drops the rest; "
        "a 2-byte first segment and a cut inside the name keep it out of those two",
    ),
    "splitreject": (
        ("--split-chunk", "8"),
        "not a censor: the server resets a first segment under 8 bytes",
    ),
}
# Not a censor (a server that resets short first segments): passing without govpass is
# what it does, not a miss.
NOT_A_CENSOR = ("splitreject",)
# Censors no split-only strategy beats, and why: the lab shows that govpass cannot help.
UNFIXABLE = {
    "reassemble": "it reassembles the whole stream, so no cut hides the name",
    "address": "it blocks the server's address, whatever the name",
}


@dataclass
class Cell:
    censor: str
    client: str
    family: int
    without: tuple[bool, str] = (False, "")
    with_: tuple[bool, str] = (False, "not run")
    window: tuple[float, float] = (0.0, 0.0)
    sizes: list[int] | None = None
    fix: tuple[bool, str] | None = None  # with the censor's FIXES, when the split given failed
    fix_window: tuple[float, float] = (0.0, 0.0)

    @property
    def passes(self) -> bool:
        """Through the censor with govpass: the split given, or else the fix."""
        return self.with_[0] or bool(self.fix and self.fix[0])

    @property
    def expected_blocked(self) -> bool:
        """A censor no split beats: staying blocked with govpass is the honest result."""
        return self.censor in UNFIXABLE


def censors_of(text: str) -> list[str]:
    """--censor: a lab censor kind, a comma-separated list of them, or both."""
    from govpass.lab import CENSOR_KINDS

    names = [k.strip() for k in text.split(",") if k.strip()]
    if not names:
        names = ["both"]
    out: list[str] = []
    for k in names:
        if k != "both" and k not in CENSOR_KINDS:
            raise ConfigError(
                f"invalid censor: {k[:40]!r} (accepted: {', '.join(CENSOR_KINDS)}, or both "
                "for firstpacket,string; several separated by commas)",
                field="censor",
            )
        out += [c for c in (BOTH if k == "both" else (k,)) if c not in out]
    return out


def _preflight(pcap: Path) -> None:
    if os.geteuid() != 0:
        raise GovpassError("govpass lab needs root (network namespaces, NFQUEUE, tcpdump)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    try:
        import netfilterqueue  # noqa: F401
    except ImportError:
        missing.append("python netfilterqueue")
    if missing:
        raise GovpassError(f"govpass lab needs {', '.join(missing)} (ci/lab-deps.sh installs them)")
    if not pcap.parent.is_dir():
        raise ConfigError(f"invalid pcap: directory {pcap.parent} does not exist", field="pcap")


def _client_kinds(wanted: str) -> tuple[list[str], list[str]]:
    """(kinds to run, requested kinds that are not installed)."""
    from govpass.lab import CLIENT_KINDS
    from govpass.lab.clients import available

    names = [k.strip() for k in wanted.split(",") if k.strip()] or list(CLIENT_KINDS)
    unknown = [k for k in names if k not in CLIENT_KINDS]
    if unknown:
        raise ConfigError(
            f"invalid clients: {unknown[0]!r} (accepted: {', '.join(CLIENT_KINDS)})",
            field="clients",
        )
    return [k for k in names if available(k)], [k for k in names if not available(k)]


def _daemon_args(flags: dict[str, Any], config_file: Path | None) -> list[str]:
    args = ["run", "--workers", "1", "--stats-interval", "1"]
    if config_file is not None:
        args += ["--config", str(config_file.resolve())]
    for name, value in flags.items():
        if value is not None:
            args += [f"--{name}", str(value)]
    return args


@contextlib.contextmanager
def _daemon(lab: "Lab", args: Sequence[str]) -> Iterator[int]:
    """``govpass run`` in the client namespace for the block; stopped with SIGTERM."""
    run_dir = lab.workdir / f"run-{time.monotonic_ns()}"
    pid = lab.spawn("client", ["-m", "govpass", *args], python=True,
                    env={"GOVPASS_RUN_DIR": str(run_dir)})  # fmt: skip
    log = lab.log_of(pid)
    deadline = time.monotonic() + START_TIMEOUT
    while "running:" not in log.read_text(errors="replace"):
        if pid not in lab.alive():
            lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
            raise GovpassError(f"govpass run failed in the lab: {lines[-1] if lines else '?'}")
        if time.monotonic() > deadline:
            raise GovpassError(f"govpass run did not start within {START_TIMEOUT:g} s")
        time.sleep(0.05)
    try:
        yield pid
    finally:
        popen = lab.procs.procs[pid].popen
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=10)
        lab.kill(pid)


def _run_parallel(lab: "Lab", cells: list[Cell], name: str, timeout: float) -> None:
    # Chromium is heavy: two at a time at most.
    slots = threading.BoundedSemaphore(2)

    def one(cell: Cell) -> tuple[bool, str]:
        with slots if cell.client == "chromium" else contextlib.nullcontext():
            return lab.client(cell.client, name, cell.family, timeout=timeout)

    with ThreadPoolExecutor(max_workers=max(1, len(cells))) as pool:
        for cell, result in zip(cells, pool.map(one, cells), strict=True):
            cell.without = result


def _attach_sizes(cells: list[Cell], flows: list[Any]) -> None:
    """First-record segment sizes of the connection each run with govpass opened
    (the fix's run, when there was one)."""
    for cell in cells:
        start, end = cell.fix_window if cell.fix is not None else cell.window
        for flow in flows:
            if flow.syn_seen and flow.segments and start <= flow.segments[0].ts <= end:
                cell.sizes = flow.sizes
                break


def _cell_text(result: tuple[bool, str] | None, with_govpass: bool) -> str:
    if result is None:
        return "-"
    ok, _detail = result
    if with_govpass:
        return "[green]ok[/green]" if ok else "[red]blocked[/red]"
    # Without govpass a pass means the censor missed this hello by itself.
    return "[yellow]ok (missed)[/yellow]" if ok else "[red]blocked[/red]"


def _table(cells: list[Cell], split: str) -> Table:
    fixed = any(c.fix is not None for c in cells)
    table = Table(title="govpass lab", header_style="bold")
    columns = ["censor", "client", "IP", "without govpass", f"with govpass ({split})"]
    for col in [*columns, *(["with the censor's fix"] if fixed else []), "segments"]:
        table.add_column(col)
    for c in cells:
        sizes = ",".join(map(str, c.sizes)) if c.sizes else "-"
        fix = [_fix_text(c)] if fixed else []
        with_ = _cell_text(c.with_, True)
        if c.expected_blocked and not c.with_[0]:
            with_ = "[yellow]blocked (unfixable)[/yellow]"
        without = _cell_text(c.without, False)
        if c.censor in NOT_A_CENSOR and c.without[0]:
            without = "[green]ok[/green]"
        table.add_row(c.censor, c.client, f"v{c.family}", without, with_, *fix, sizes)
    return table


def _fix_text(c: Cell) -> str:
    if c.fix is None:
        return "-"
    return f"{_cell_text(c.fix, True)} ({' '.join(FIXES[c.censor][0])})"


def _verdict(which: str, row: list[Cell], split: str) -> tuple[bool, str]:
    """(as designed, one line) for one censor's row: what it blocks, what gets through."""
    n = len(row)
    blocked = sum(not c.without[0] for c in row)
    first = f"censor {which}: blocks {blocked}/{n} without govpass"
    with_split = sum(c.with_[0] for c in row)
    if which in UNFIXABLE:
        if with_split == 0:
            return True, (
                f"{first}; 0/{n} pass with govpass: unfixable by splitting "
                f"({UNFIXABLE[which]}); govpass cannot help here, a VPN or proxy can"
            )
        return False, f"{first}; {with_split}/{n} pass with govpass, though no split beats it"
    if with_split == n:
        return True, f"{first}; all {n} pass with govpass ({split})"
    fixed = [c for c in row if c.fix is not None]
    if which in FIXES and fixed and all(c.passes for c in row):
        args, why = FIXES[which]
        where = "for servers like this one" if which in NOT_A_CENSOR else (
            "where a censor like this one blocks you")  # fmt: skip
        return True, (
            f"{first}; {with_split}/{n} pass with govpass ({split}) ({why}); all {n} pass "
            f"with {' '.join(args)}: use it {where}"
        )
    return False, f"{first}; only {sum(c.passes for c in row)}/{n} pass with govpass"


def _failure(c: Cell) -> str:
    _ok, detail = c.fix if c.fix is not None else c.with_
    return f"with govpass, {c.client} IPv{c.family} through {c.censor}: {detail}"


def _timed(
    lab: "Lab", cell: Cell, name: str, timeout: float
) -> tuple[tuple[bool, str], tuple[float, float]]:
    started = time.time()
    result = lab.client(cell.client, name, cell.family, timeout=timeout + 1.0)
    return result, (started, time.time())


@app.command("lab")
@with_settings(ENGINE_SETTINGS)
def lab_command(
    flags: dict[str, Any],
    config_file: Path | None,
    censor: Annotated[
        str,
        typer.Option(
            "--censor",
            metavar="KIND",
            help="Which censor(s) to run, one after the other: firstpacket, string, tspu, "
            "reassemble, splitreject, address, comma-separated, or both (firstpacket,string).",
        ),
    ] = "both",
    pcap: Annotated[
        Path, typer.Option("--pcap", help="Where to write the client-side capture.")
    ] = Path("govpass-lab.pcap"),
    clients: Annotated[
        str,
        typer.Option(
            "--clients",
            metavar="LIST",
            help="Clients to run: curl,openssl,python,chromium (default: every one installed).",
        ),
    ] = "",
    family: Annotated[Family, typer.Option("--family", help="IP version(s) to try.")] = Family.both,
    name: Annotated[str, typer.Option("--name", help="The name the censor blocks.")] = (
        "blocked.example"
    ),
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=0.5, help="Seconds before a client counts as blocked."),
    ] = 3.0,
) -> None:
    """Show a censor blocking a name, and govpass getting it through (needs root)."""
    censors = censors_of(censor)  # an unknown kind: one line, before any work
    _preflight(pcap)
    config_mod.load(config_file, flags=flags)  # bad split flags: one line, before any work
    kinds, missing = _client_kinds(clients)
    if not kinds:
        raise GovpassError(f"none of the clients {', '.join(missing)} is installed")
    from govpass.lab import Lab
    from govpass.runtime.signals import signals_raise

    console = Console(highlight=False)
    families = [4, 6] if family is Family.both else [int(family.value)]
    daemon_args = _daemon_args(flags, config_file)
    split = " ".join(daemon_args[5:]) or "default split"
    # Only govpass's defaults get the fix tried: a split given here is the one tested.
    try_fix = not any(v is not None for v in flags.values()) and config_file is None
    if missing:
        console.print(f"[yellow]not installed, skipped:[/yellow] {', '.join(missing)}")
    cells: list[Cell] = []
    problems: list[str] = []
    try:
        with signals_raise(), Lab() as lab:
            console.print(f"lab: namespaces {lab.prefix}-{{client,censor,server}}")
            lab.start_server(names=[name, ALLOWED_NAME])
            with lab.capture("client") as cap:
                for which in censors:
                    row = [Cell(which, k, f) for k in kinds for f in families]
                    cells += row
                    console.print(f"censor {which}: without govpass ...")
                    # The address censor blocks the server's addresses, not a name.
                    lab.start_censor(which, names=[] if which == "address" else [name])
                    try:
                        _run_parallel(lab, row, name, timeout)
                        console.print(f"censor {which}: with govpass ({split}) ...")
                        with _daemon(lab, daemon_args):
                            for cell in row:
                                cell.with_, cell.window = _timed(lab, cell, name, timeout)
                        failed = [c for c in row if not c.with_[0]]
                        if failed and try_fix and which in FIXES:
                            fix = FIXES[which][0]
                            console.print(f"censor {which}: with govpass {' '.join(fix)} ...")
                            with _daemon(lab, [*daemon_args, *fix]):
                                for cell in failed:
                                    cell.fix, cell.fix_window = _timed(lab, cell, name, timeout)
                    finally:
                        lab.stop_censor()
            shutil.copyfile(cap.path, pcap)
            _attach_sizes(cells, cap.flows())
            summary = cap.summary
        problems = lab.problems + lab.leftovers()
    except KeyboardInterrupt:
        console.print("interrupted: the lab was removed")
        sys.exit(130)
    console.print(_table(cells, split))
    as_designed = True
    for which in censors:
        ok, text = _verdict(which, [c for c in cells if c.censor == which], split)
        as_designed &= ok
        console.print(("[green]ok  [/green] " if ok else "[red]FAIL[/red] ") + escape(text))
    for c in cells:
        if not c.passes and not c.expected_blocked:
            console.print(f"[red]{escape(_failure(c))}[/red]")
    fixable = [c for c in cells if not c.expected_blocked]
    fixed = sum(not c.with_[0] and c.passes for c in fixable)
    how = f" ({fixed} of them with the censor's fix)" if fixed else ""
    unfixable = len(cells) - len(fixable)
    if unfixable:
        how += f"; {unfixable} more through censors no split beats, blocked as expected"
    passes = sum(c.passes for c in fixable)
    console.print(f"with govpass: {passes}/{len(fixable)} passed{how}; pcap: {escape(str(pcap))} "
                  f"({summary})")  # fmt: skip
    for problem in problems:
        console.print(f"[red]lab clean-up:[/red] {escape(problem)}")
    if any(c.without[0] and c.censor not in NOT_A_CENSOR for c in cells):
        console.print(
            "ok (missed): the censor let this hello through even without govpass; "
            "Chromium's ~2 KB hello sometimes carries the name in its second segment"
        )
    if not as_designed or problems:
        sys.exit(1)
