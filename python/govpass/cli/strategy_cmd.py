"""`govpass strategy show | clear`: the per-host strategies of ``--strategy auto``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from govpass import config as config_mod
from govpass.cli import app
from govpass.cli.options import with_settings
from govpass.errors import GovpassError
from govpass.safetext import text

strategy_app = typer.Typer(
    help="Show or clear the strategies --strategy auto learned per host.", no_args_is_help=True
)
app.add_typer(strategy_app, name="strategy")


def _state(path: Path) -> dict[str, dict[str, tuple[str, bool, float | None]]]:
    from govpass.strategy_learner import parse_scopes, read_state

    try:
        data = read_state(path)
        return {} if data is None else parse_scopes(data)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise GovpassError(f"strategy-state {text(str(path))}: {why}") from None


@strategy_app.command("show")
@with_settings(("strategy-state",))
def show(
    flags: dict[str, Any],
    config_file: Path | None,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show each host's strategy as the state file has it (PROFILE:host for the
    hosts of an auto [[profile]])."""
    import time

    config = config_mod.load(config_file, flags=flags)
    now = time.time()
    rows: dict[str, str] = {}
    # An auto [[profile]]'s hosts as "PROFILE:host" (profile names hold no ':')
    for scope, hosts in sorted(_state(Path(config.strategy_state)).items()):
        for h, (label, _plain, until) in sorted(hosts.items()):
            key = f"{scope}:{h}" if scope else h
            rows[key] = "unfixable" if until is not None and until > now else label
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no hosts learned ({text(config.strategy_state)})")
    for host, label in rows.items():
        typer.echo(f"{host} {label}")  # validated host names and strategy labels


@strategy_app.command("clear")
@with_settings(("strategy-state",))
def clear(flags: dict[str, Any], config_file: Path | None) -> None:
    """Forget every learned strategy (a running daemon notices within a second)."""
    config = config_mod.load(config_file, flags=flags)
    path = Path(config.strategy_state)
    try:
        path.unlink()
    except FileNotFoundError:
        typer.echo(f"nothing to clear ({text(str(path))})")
        return
    except OSError as e:
        raise GovpassError(f"strategy-state {text(str(path))}: {e.strerror}") from None
    typer.echo(f"cleared {text(str(path))}")
