"""`govpass rules install | remove | show`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from govpass import config as config_mod
from govpass.cli import app
from govpass.cli.options import with_settings
from govpass.errors import FirewallError

rules_app = typer.Typer(
    help="Install, remove or show the kernel interception rules.", no_args_is_help=True
)
app.add_typer(rules_app, name="rules")

RULE_SETTINGS = (
    "queue-num",
    "workers",
    "mark",
    "watch-mark",
    "prefilter",
    "collect-timeout",
    "ports",
    "mode",
    "iface",
    "exclude-iface",
    "firewall",
    "ipv6",
    "block-quic",
    "hostlist-auto",  # auto-learning adds the inbound rules
)


FORCE_HELP = "Change the rules even while a govpass daemon runs in this network namespace."


def _need_root() -> None:
    from govpass.privileges import missing_capabilities

    if "CAP_NET_ADMIN" in missing_capabilities():
        raise FirewallError("managing firewall rules needs root or CAP_NET_ADMIN")


@rules_app.command("install")
@with_settings(RULE_SETTINGS)
def install(
    flags: dict[str, Any],
    config_file: Path | None,
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Install the rules (idempotent: replaces what govpass installed before)."""
    from govpass import rules
    from govpass.instance import refuse_if_running
    from govpass.rules.from_config import firewall_preference, rule_spec

    config = config_mod.load(config_file, flags=flags)
    _need_root()
    refuse_if_running("replace", force)
    result = rules.install(rule_spec(config), backend=firewall_preference(config))
    typer.echo(f"installed with {result.backend} ({', '.join(result.families)}): {result.reason}")
    typer.echo(f"pre-filter: {result.prefilter_summary}")


@rules_app.command("remove")
def remove(force: bool = typer.Option(False, "--force", help=FORCE_HELP)) -> None:
    """Remove every rule govpass installed, including leftovers of a crashed run."""
    from govpass import rules
    from govpass.errors import RulesStillPresent
    from govpass.instance import refuse_if_running

    _need_root()
    holder = refuse_if_running("remove", force)
    try:
        result = rules.remove()
    except RulesStillPresent:
        if holder is None:
            raise
        # Forced past a running daemon, which restores its rules when they go missing:
        # it did so between the removal and the check. Not a failure to remove.
        typer.echo(
            f"removed; the running govpass daemon (pid {holder.pid}) put its rules back "
            "at once: it restores them while it runs, stop it to remove them for good"
        )
        return
    if result.nothing_installed:
        typer.echo("nothing installed")
    else:
        typer.echo("removed: " + ", ".join(result.removed))
    if result.not_inspected:
        # Leftovers there may remain; say so rather than claim a clean slate.
        typer.echo(f"note: {' '.join(result.not_inspected.split())}")


@rules_app.command("show")
def show() -> None:
    """Show the rules govpass has installed now."""
    from govpass import rules

    _need_root()
    typer.echo(rules.show())
