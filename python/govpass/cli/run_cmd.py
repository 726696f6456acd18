"""`govpass run`: the daemon."""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from govpass import config as config_mod
from govpass.cli import app, err_console
from govpass.cli.options import HELP_ALL_HINT, with_settings
from govpass.cli.status import ChangeLog, line, table
from govpass.errors import BackendError, ConfigError
from govpass.safetext import text


def _log(msg: str) -> None:
    # The last line of defence: whatever a message quotes (names from packets,
    # list lines, paths) cannot break the line or reach the terminal raw.
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(f"{stamp} govpass: {text(msg, 4000)}", file=sys.stderr, flush=True)


def require_privileges() -> None:
    from govpass.privileges import missing_capabilities

    missing = missing_capabilities()
    if missing:
        raise BackendError(
            "govpass run needs root or CAP_NET_ADMIN and CAP_NET_RAW "
            f"(missing {', '.join(missing)})"
        )


@app.command("run", epilog=HELP_ALL_HINT)
@with_settings()
def run_command(flags: dict[str, Any], config_file: Path | None) -> None:
    """Capture outbound TLS flows and split their first ClientHello (NFQUEUE on Linux;
    --backend divert: WinDivert, or its eBPF version on Linux, or divert(4) on FreeBSD)."""
    config = config_mod.load(config_file, flags=flags)
    if config.backend == "divert":
        from govpass.backends.divert_run import run_divert

        run_divert(config, _log)
        return
    if not sys.platform.startswith("linux"):
        raise ConfigError(
            "backend nfqueue runs only on Linux (accepted here: divert)", field="backend"
        )
    require_privileges()
    from govpass.backends import unavailable_reason
    from govpass.daemon import Daemon
    from govpass.stop_signals import stop_on_signals

    reason = unavailable_reason("nfqueue")
    if reason:
        raise BackendError(f"nfqueue backend unusable: {reason}")
    if config.mode == "router" and not config.iface:
        raise ConfigError(
            "router mode needs --iface WAN (accepted: one or more interface names)", field="iface"
        )
    from govpass.interfaces import check_listed

    check_listed(config.iface)
    daemon = Daemon(config, _log)
    interactive = sys.stdout.isatty()
    try:
        # A stop signal sets a flag that the loop below polls (at least every 0.25 s),
        # never an exception: one raised at a random point (in the middle of a state
        # file's rename, a rule reinstall or a worker's restart) would leave that
        # half done and the clean-up to trip over it.
        with stop_on_signals(daemon.reload) as stopped:
            daemon.start()
            # The state files exist (and replace whatever was planted under their
            # names) before the daemon says it runs, not one stats interval later.
            stats = daemon.stats()
            _log(
                f"running: split-chunk={config.split_chunk} split-pos="
                f"{','.join(config.split_pos) or '-'} mode={config.mode}"
            )
            if interactive:
                from rich.live import Live

                live: Any = Live(table(stats), refresh_per_second=2)
            else:
                live = nullcontext()
            changes = ChangeLog()
            with live:
                while not stopped():
                    daemon.wait(config.stats_interval, stopped)
                    if stopped():
                        break
                    daemon.check_workers()
                    daemon.refresh_interfaces()
                    stats = daemon.stats()
                    if interactive:
                        live.update(table(stats))
                    elif text := changes.due(stats):
                        _log(text)
        _log("stopping")
    except KeyboardInterrupt:  # only before the handlers are in place
        _log("stopping")
    finally:
        daemon.stop()
    err_console.print(line(daemon.final_stats), markup=False)
