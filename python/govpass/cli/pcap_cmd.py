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
from govpass.config import BY_NAME

# The engine's settings, each a flag spelled as its config key.
ENGINE_SETTINGS = (
    "split-mode",
    "split-chunk",
    "split-pos",
    "collect-timeout",
    "max-buffer",
    "max-held-pkts",
    "max-seg-payload",
    "flow-timeout",
    "max-flows",
    "ports",
)


def _help(name: str) -> str:
    s = BY_NAME[name]
    default = ",".join(s.default) if isinstance(s.default, tuple) else s.default
    return f"{s.help} [default: {default or 'none'}; env {s.env}]"


def _opt(name: str, metavar: str) -> Any:
    # Values arrive as text and are checked by config.load, so a bad value is one
    # ConfigError line naming the setting, as for the file and the environment.
    return typer.Option(f"--{name}", help=_help(name), metavar=metavar, show_default=False)


@app.command("pcap")
def pcap_command(
    input_path: Annotated[
        Path,
        typer.Argument(metavar="IN", show_default=False, help="Capture to read (pcap or pcapng)"),
    ],
    output_path: Annotated[
        Path, typer.Argument(metavar="OUT", show_default=False, help="pcap file to write")
    ],
    split_mode: Annotated[str | None, _opt("split-mode", "[tls-hello|immediate]")] = None,
    split_chunk: Annotated[str | None, _opt("split-chunk", "BYTES")] = None,
    split_pos: Annotated[str | None, _opt("split-pos", "LIST")] = None,
    collect_timeout: Annotated[str | None, _opt("collect-timeout", "MS")] = None,
    max_buffer: Annotated[str | None, _opt("max-buffer", "BYTES")] = None,
    max_held_pkts: Annotated[str | None, _opt("max-held-pkts", "N")] = None,
    max_seg_payload: Annotated[str | None, _opt("max-seg-payload", "BYTES")] = None,
    flow_timeout: Annotated[str | None, _opt("flow-timeout", "SECONDS")] = None,
    max_flows: Annotated[str | None, _opt("max-flows", "N")] = None,
    ports: Annotated[str | None, _opt("ports", "LIST")] = None,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            metavar="FILE",
            show_default=False,
            help="TOML config file (keys spelled as the flags, optionally under [govpass])",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
) -> None:
    """Run the engine over a capture; write what would go on the wire to OUT.

    Settings come from defaults < --config file < GOVPASS_* environment < flags.
    """
    values = (
        split_mode,
        split_chunk,
        split_pos,
        collect_timeout,
        max_buffer,
        max_held_pkts,
        max_seg_payload,
        flow_timeout,
        max_flows,
        ports,
    )
    flags = dict(zip(ENGINE_SETTINGS, values, strict=True))
    cfg = config.load(file=config_file, flags=flags)
    summary = pcap.rewrite(input_path, output_path, cfg.engine_config())
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
