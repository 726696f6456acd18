"""`govpass doctor`: what works here, what does not, and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from govpass import config as config_mod
from govpass.cli import app
from govpass.cli.options import with_settings

MARKS = {"ok": "[green]ok  [/green]", "warn": "[yellow]warn[/yellow]", "fail": "[red]FAIL[/red]"}


@app.command("doctor")
@with_settings(
    (
        "queue-num",
        "workers",
        "mode",
        "iface",
        "exclude-iface",
        "ports",
        "ipv6",
        "prefilter",
        "packet-loop",
        "inject",
        "kernel-split",
        "split-mode",
        "split-chunk",
        "split-pos",
        "strategy",
        "strategy-state",
    )
)
def doctor(
    flags: dict[str, Any],
    config_file: Path | None,
    as_json: bool = typer.Option(
        False, "--json", help="Print the checks as a JSON array (schema in the README)."
    ),
) -> None:
    """Check privileges, NFQUEUE, the packet loop, firewall backends, pre-filter and kernel
    split, leftover rules, offloads, backends and the strategies strategy auto learned."""
    from govpass.doctor import run_checks
    from govpass.doctor_json import document, exit_status
    from govpass.safetext import markup

    config = config_mod.load(config_file, flags=flags)
    results = run_checks(config)
    if as_json:
        typer.echo(document(results))
    else:
        # One check per line whatever the width (a pipe counts as 80 columns).
        console = Console(highlight=False, soft_wrap=True)
        for r in results:
            # Names and details quote interfaces, commands' output and files: escaped.
            fix = f"  [dim]fix: {markup(r.fix, 400)}[/dim]" if r.fix else ""
            line = f"{markup(r.name, 100)}: {markup(r.detail, 1000)}"
            console.print(f"{MARKS[r.status]} {line}{fix}")
    code = exit_status(results)
    if code:
        raise typer.Exit(code)
