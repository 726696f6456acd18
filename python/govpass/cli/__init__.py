"""The ``govpass`` command. Each subcommand lives in its own module; this one
builds the app and turns known errors into one line and an exit code."""

from __future__ import annotations

import os
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

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("govpass")
        except PackageNotFoundError:  # run from a source tree that was never installed
            text = "unknown (not installed)"
        print(f"govpass {text}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Split the first TLS ClientHello of outbound HTTPS flows so single-packet SNI
    filters miss it. Never changes TLS bytes; fails open."""


def _register() -> None:
    # Imported for their side effect of adding commands to `app`.
    import govpass.cli.probe_cmd  # noqa: F401
    from govpass.cli import (  # noqa: F401
        doctor_cmd,
        lab_cmd,
        pcap_cmd,
        rules_cmd,
        run_cmd,
        stats_cmd,
        strategy_cmd,
    )


def _usage_error(e: Exception) -> int | None:
    """Exit code for a command-line usage error (click's, whichever copy of
    click typer uses), after printing it as one line; None for other exceptions."""
    message = getattr(e, "format_message", None)
    code = getattr(e, "exit_code", None)
    if callable(message) and isinstance(code, int):
        from govpass.cli.options import usage_line

        command = getattr(getattr(e, "ctx", None), "command_path", None)
        err_console.print(usage_line(str(message()), command), style="red", markup=False)
        return code
    if type(e).__name__ == "Abort":
        return 1
    return None


def _one_line(error: Exception) -> str:
    """The message, escaped: it may quote a config value, a list line or a path."""
    from govpass.safetext import text

    return text(str(error), 2000)


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app; known errors become one line on stderr."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--help-all" in args:  # every platform's options, before the commands are built
        from govpass.cli.options import HELP_ALL_ENV

        os.environ[HELP_ALL_ENV] = "1"
        args = ["--help" if a == "--help-all" else a for a in args]
    _register()
    try:
        # Without standalone mode, typer.Exit(n) comes back as a return value.
        code = app(args=args, standalone_mode=False)
    except ConfigError as e:
        err_console.print(f"govpass: {_one_line(e)}", style="red", markup=False)
        sys.exit(2)
    except GovpassError as e:
        err_console.print(f"govpass: {_one_line(e)}", style="red", markup=False)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:
        code = _usage_error(e)
        if code is None:
            raise
        sys.exit(code)
    if isinstance(code, int) and code:
        sys.exit(code)
