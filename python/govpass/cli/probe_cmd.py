"""`govpass probe`: find the split that gets each host through this network."""

from __future__ import annotations

import ipaddress
import re
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from govpass import host_os
from govpass.cli import app
from govpass.errors import BackendError, ConfigError

# A DNS name as people type it (trailing dot allowed), or an address literal.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})"
_NAME = re.compile(rf"^(?=.{{1,253}}\.?$){_LABEL}(?:\.{_LABEL})*\.?$")


def check_host(value: str, what: str) -> str:
    """The name, or a one-line error naming ``what`` and what it accepts."""
    if _NAME.match(value):
        return value.rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    from govpass.probe.report import escape

    raise ConfigError(
        f"invalid {what}: {escape(value, 80)!r} (accepted: a host name such as "
        "example.com, or an IP address)",
        field=what,
    )


def _daemon_mark() -> int:
    from govpass import config as config_mod

    return config_mod.load(None).mark  # defaults and GOVPASS_MARK, as run would use


@app.command("probe")
def probe_command(
    hosts: Annotated[list[str], typer.Argument(help="Host names to probe.", show_default=False)],
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 443,
    connect: Annotated[
        str | None,
        typer.Option(
            "--connect",
            metavar="ADDR",
            help="Connect to this address instead of resolving (like curl --connect-to).",
        ),
    ] = None,
    control: Annotated[
        list[str] | None,
        typer.Option(
            "--control",
            metavar="HOST",
            help="An unblocked host strategies must not break (repeatable; default: "
            "the hosts given that work unsplit).",
        ),
    ] = None,
    tries: Annotated[
        int, typer.Option("--tries", min=1, max=20, help="Tries per strategy and hello.")
    ] = 3,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.5, max=120, help="Seconds per attempt.")
    ] = 4.0,
    max_wait: Annotated[
        float,
        typer.Option(
            "--max-wait",
            min=0,
            max=1800,
            help="Seconds the probe may wait in all for a residual block to end.",
        ),
    ] = 180.0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per host.")] = False,
    write_config: Annotated[
        Path | None,
        typer.Option(
            "--write-config",
            metavar="FILE",
            help="Write a config for `govpass run --config FILE` with the strategies found.",
        ),
    ] = None,
) -> None:
    """Diagnose each host and find the split-only strategy that gets it through
    (needs the same privileges as run; only the probe's own connections are split)."""
    names = [check_host(h, "host") for h in hosts]
    controls = tuple(check_host(c, "--control") for c in control or ())
    addr = None
    if connect is not None:
        try:
            addr = str(ipaddress.ip_address(connect))
        except ValueError:
            raise ConfigError(
                f"invalid --connect: {connect[:80]!r} (accepted: an IPv4 or IPv6 address)",
                field="connect",
            ) from None
    if not host_os.is_linux():
        raise BackendError("govpass probe runs on Linux only (NFQUEUE)")
    from govpass.privileges import missing_capabilities

    missing = missing_capabilities()
    if missing:
        raise BackendError(
            "govpass probe needs root or CAP_NET_ADMIN and CAP_NET_RAW, like govpass run "
            f"(missing {', '.join(missing)})"
        )
    from govpass.backends import unavailable_reason
    from govpass.probe.config_file import render, write_atomic
    from govpass.probe.intercept import Marks
    from govpass.probe.report import escape, exit_code, json_lines, table, verdict_lines
    from govpass.probe.run import ProbeOptions, probe

    reason = unavailable_reason("nfqueue")
    if reason:
        raise BackendError(f"govpass probe needs NFQUEUE: {reason}")
    opts = ProbeOptions(port, addr, controls, tries, timeout, max_wait)
    marks = Marks(_daemon_mark())
    err = Console(stderr=True, highlight=False)
    try:
        if err.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            with Progress(
                TextColumn("hosts"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.description}"), console=err, transient=True,
            ) as bar:  # fmt: skip
                task = bar.add_task("starting", total=len(names))

                def show(text: str) -> None:
                    bar.update(task, description=escape(text, 100))

                results = probe(names, opts, marks, show, lambda: bar.advance(task))
        else:
            results = probe(names, opts, marks)
    except KeyboardInterrupt:
        err.print("govpass probe: interrupted; rules removed", markup=False)
        raise typer.Exit(130) from None
    if as_json:
        sys.stdout.write(json_lines(results))
    else:
        out = Console(highlight=False)
        if out.is_terminal:
            out.print(table(results))
        else:
            for line in verdict_lines(results):
                out.print(line, markup=False)
    if write_config is not None:
        write_atomic(write_config, render(results))
        err.print(f"config written to {write_config}", markup=False)
    raise typer.Exit(exit_code(results))
