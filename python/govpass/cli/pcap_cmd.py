"""``govpass pcap IN OUT``: run the engine over a capture and write the resulting wire."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from govpass import config, pcap
from govpass.cli import app
from govpass.cli.options import ENGINE_SETTINGS, TARGETING_SETTINGS, with_settings


@app.command("pcap")
@with_settings((*ENGINE_SETTINGS, "ports", *TARGETING_SETTINGS))
def pcap_command(
    flags: dict[str, Any],
    config_file: Path | None,
    input_path: Annotated[
        Path,
        typer.Argument(metavar="IN", show_default=False, help="Capture to read (pcap or pcapng)"),
    ],
    output_path: Annotated[
        Path, typer.Argument(metavar="OUT", show_default=False, help="pcap file to write")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
) -> None:
    """Run the engine over a capture; write what would go on the wire to OUT.

    Settings come from defaults < --config file < GOVPASS_* environment < flags.
    """
    cfg = config.load(file=config_file, flags=flags)
    from govpass.targeting import Targeting

    targeting = Targeting.from_config(cfg)
    profiles = targeting.build() if targeting.active else None
    summary = pcap.rewrite(input_path, output_path, cfg.engine_config(), profiles)
    if summary.input_truncated:
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"govpass: warning: {input_path} ends mid-packet; "
            f"used the {summary.packets_in} packets before the cut",
            style="yellow",
            markup=False,
        )
    if as_json:
        typer.echo(json.dumps(summary.as_dict(), indent=2))
        return
    console = Console(highlight=False)
    if console.is_terminal:
        console.print(_table(summary))
    else:
        typer.echo(_plain(summary))


def _rows(summary: pcap.Summary) -> list[tuple[str, str]]:
    d = summary.as_dict()
    rows = [
        ("input", f"{d['input']} ({d['format']}, {d['link_name']})"),
        ("output", d["output"]),
        ("packets in", str(d["packets_in"])),
        ("packets out", str(d["packets_out"])),
        ("  passed", str(d["passed"])),
        ("  released", str(d["released"])),
        ("  new segments", str(d["sent"])),
        ("  dropped (replaced)", str(d["dropped"])),
        ("  not IP", str(d["non_ip"])),
        ("flows", str(d["flows"])),
        ("splits", str(d["splits"])),
        ("resplits", str(d["resplits"])),
        ("segments", str(d["segments"])),
        ("passed by profile", str(d["profile_pass"])),
    ]
    fails = {k: v for k, v in d["fail_open"].items() if v}
    rows.append(("fail-open", str(sum(fails.values()))))
    rows.extend((f"  {reason}", str(n)) for reason, n in sorted(fails.items()))
    return rows


def _plain(summary: pcap.Summary) -> str:
    rows = _rows(summary)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _table(summary: pcap.Summary) -> Table:
    table = Table(title="govpass pcap", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for k, v in _rows(summary):
        table.add_row(k, v)
    return table
