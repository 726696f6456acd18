"""The ``govpass`` command. Each subcommand lives in its own module; this one
builds the app and turns known errors into one line and an exit code."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from govpass.errors import ConfigError, GovpassError

app = typer.Typer(
    name="govpass",
    help="Split the first TLS ClientHello of outbound HTTPS flows so single-packet SNI "
    "filters miss it. Never changes TLS bytes; fails open.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

err_console = Console(stderr=True, highlight=False)


def _register() -> None:
    # Imported for their side effect of adding commands to `app`.
    from govpass.cli import doctor_cmd, pcap_cmd, rules_cmd, run_cmd, stats_cmd  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app; known errors become one line on stderr."""
    _register()
    try:
        app(args=argv, standalone_mode=False)
    except ConfigError as e:
        err_console.print(f"govpass: {e}", style="red", markup=False)
        sys.exit(2)
    except GovpassError as e:
        err_console.print(f"govpass: {e}", style="red", markup=False)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors and aborts
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise
