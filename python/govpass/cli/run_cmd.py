"""`govpass run`: the daemon."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from govpass import config as config_mod
from govpass import host_os
from govpass.cli import app
from govpass.cli.options import HELP_ALL_HINT, with_settings
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
        from govpass.runtime.divert_service import run_divert

        run_divert(config, _log)
        return
    if not host_os.is_linux():
        raise ConfigError(
            "backend nfqueue runs only on Linux (accepted here: divert)", field="backend"
        )
    require_privileges()
    from govpass.backends import unavailable_reason
    from govpass.runtime.nfqueue_service import NfqueueService
    from govpass.runtime.service import run

    reason = unavailable_reason("nfqueue")
    if reason:
        raise BackendError(f"nfqueue backend unusable: {reason}")
    if config.mode == "router" and not config.iface:
        raise ConfigError(
            "router mode needs --iface WAN (accepted: one or more interface names)", field="iface"
        )
    from govpass.interfaces import check_listed

    check_listed(config.iface)
    run(NfqueueService(config, _log), _log, config.stats_interval, metrics=config.metrics)
