"""The FreeBSD command line (`python -m govpass.cli.freebsd_cmd`):

    python -m govpass.cli.freebsd_cmd run [--config F] [--<setting> V ...]
    python -m govpass.cli.freebsd_cmd rules install|remove|show|plan [...]

Every shared setting (`govpass run --help`) is accepted as --<name> VALUE. It
uses argparse, not the typer app: the typer app's `rules` commands drive
Linux's iptables/nft.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from govpass import config as config_mod
from govpass.backends.freebsd import BsdFirewall, options_from, rule_spec
from govpass.errors import ConfigError, GovpassError
from govpass.rules import bsd
from govpass.runtime.freebsd_service import run_freebsd
from govpass.safetext import text
from govpass.settings import SETTINGS


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=None, help="TOML settings file")
    for s in SETTINGS:
        common.add_argument(f"--{s.name}", dest=f"setting_{s.attr}", default=None, help=s.help)
    # `--rules` is the older spelling of the shared setting `--bsd-firewall`.
    common.add_argument("--rules", dest="setting_bsd_firewall", help=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="python -m govpass.cli.freebsd_cmd",
        description="govpass on FreeBSD: divert(4) sockets with ipfw or pf rules.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", parents=[common], help="run the daemon (installs and removes rules)")
    rules = sub.add_parser("rules", parents=[common], help="install, remove or show the rules")
    rules.add_argument("action", choices=("install", "remove", "show", "plan"))
    return parser


def _log(msg: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(f"{stamp} govpass: {text(msg, 4000)}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        flags = {
            k.removeprefix("setting_").replace("_", "-"): v
            for k, v in vars(args).items()
            if k.startswith("setting_") and v is not None
        }
        config = config_mod.load(args.config, flags=flags)
        options = options_from(config)
        spec = rule_spec(config, options)
        if args.command == "run":
            final = run_freebsd(config, _log, options)
            _log(
                f"done: {final.get('divert_received', 0)} packets, "
                f"{final.get('inject_errors', 0)} write errors"
            )
            return 0
        firewall: BsdFirewall = "pf" if config.bsd_firewall == "pf" else "ipfw"
        if args.action == "plan":
            print(bsd.render_plan(spec, firewall), end="")
        elif args.action == "install":
            bsd.install(spec, firewall)
            print(f"installed with {firewall}")
        elif args.action == "remove":
            result = bsd.remove(spec, firewall)
            print("removed" if result.changed else "nothing installed")
        else:
            print(bsd.show(spec, firewall), end="")
        return 0
    except ConfigError as e:
        print(f"govpass: {e}", file=sys.stderr)
        return 2
    except (GovpassError, ValueError) as e:
        print(f"govpass: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
