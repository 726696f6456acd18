"""`govpass stats`: counters of the running daemon."""

from __future__ import annotations

import json
import os

import typer
from rich.console import Console

from govpass.cli import app
from govpass.cli.status import table
from govpass.errors import GovpassError


@app.command("stats")
def stats(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the counters of the running daemon."""
    from govpass.daemon import aggregate, run_dir

    directory = run_dir()
    info_path = directory / "daemon.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise GovpassError(f"no running govpass daemon ({info_path} not found)") from None
    pid = int(info.get("pid", 0))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise GovpassError(f"no running govpass daemon (pid {pid} is gone)") from None
    except PermissionError:
        pass
    data = {"pid": pid, **aggregate(directory)}
    rules = info.get("rules")
    if rules:
        data["rules"] = rules
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        out = table(data, title=f"govpass (pid {pid})")
        if rules:
            caption = f"rules: {rules['backend']}; pre-filter: {rules['prefilter']}"
            if data.get("kernel_split_state"):
                caption += f"\nkernel split: {data['kernel_split_state']}"
            out.caption = caption
        Console().print(out)
