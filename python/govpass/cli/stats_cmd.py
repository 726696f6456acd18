"""`govpass stats`: counters of the running daemon."""

from __future__ import annotations

import json

import typer
from rich.console import Console

from govpass.cli import app
from govpass.errors import GovpassError
from govpass.runtime.status import table
from govpass.safetext import markup


@app.command("stats")
def stats(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the counters of the running daemon."""
    from govpass.runtime.run_lock import running_daemon
    from govpass.runtime.state import DAEMON_STATE, aggregate, run_dir

    directory = run_dir()
    pid = running_daemon(directory)
    if pid is None:
        raise GovpassError(f"no running govpass daemon with run directory {directory}")
    try:
        info = json.loads((directory / DAEMON_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}  # starting, or stopping: the counters are still there
    data = {"pid": pid, **aggregate(directory)}
    rules = info.get("rules") if isinstance(info, dict) else None
    if isinstance(rules, dict):
        data["rules"] = rules
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        out = table(data, title=f"govpass (pid {pid})")
        if isinstance(rules, dict):
            caption = (
                f"rules: {markup(rules.get('backend', '?'))}; "
                f"pre-filter: {markup(rules.get('prefilter', '?'))}"
            )
            if data.get("kernel_split_state"):
                caption += f"\nkernel split: {markup(data['kernel_split_state'])}"
            out.caption = caption
        Console(highlight=False).print(out)
