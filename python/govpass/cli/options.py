"""CLI flags generated from the settings table, so every setting is a flag
with its default in the help, and flags stay in step with config keys."""

from __future__ import annotations

import functools
import inspect
import os
import re
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from govpass import host_os
from govpass.quoting import escape_text
from govpass.settings import BY_NAME, SETTINGS, Setting
from govpass.targeting import SHORTCUTS

# The engine's settings: how a hello is cut (capture and rule settings excluded).
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
)

# Which flows are split (host lists, IP sets); auto-learning needs a live daemon.
TARGETING_SETTINGS = tuple(name for name in SHORTCUTS if name != "hostlist-auto")


# Help panels of `govpass run --help` (and of the other commands' settings).
PANELS: dict[str, tuple[str, ...]] = {
    "Splitting": ("split-mode", "split-chunk", "split-pos", "max-seg-payload", "strategy",
                  "strategy-ladder", "strategy-state", "strategy-unfixable-time"),
    "Targeting": (*TARGETING_SETTINGS, "hostlist-auto", "auto-fail-threshold",
                  "auto-fail-time", "auto-retrans", "auto-silence"),
    "Capture & rules": ("ports", "backend", "mode", "iface", "exclude-iface", "firewall",
                        "prefilter", "mark", "watch-mark", "ipv6", "block-quic", "queue-num",
                        "queue-len", "copy-range"),
    "Workers & kernel": ("workers", "worker-sched", "worker-timeout", "user", "packet-loop",
                         "inject", "kernel-split"),
    "Limits": ("collect-timeout", "max-buffer", "max-held-pkts", "flow-timeout", "max-flows",
               "max-list-bytes"),
    "Divert backend (Windows, Linux eBPF)": ("queue-time", "queue-size"),
    "FreeBSD": ("divert-port", "bsd-firewall", "ipfw-rule", "pf-anchor"),
    "Output": ("stats-interval", "metrics"),
}  # fmt: skip
PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}

# Settings that mean something only on some platforms; elsewhere their flags are
# hidden from --help (still accepted, and shown by --help-all).
NFQUEUE_ONLY = ("workers", "worker-sched", "user", "packet-loop", "inject", "kernel-split",
                "queue-num", "copy-range", "prefilter", "watch-mark", "firewall")  # fmt: skip
PLATFORM_SETTINGS: dict[host_os.OsName, tuple[str, ...]] = {
    "linux": PANELS["FreeBSD"],
    "freebsd": (*NFQUEUE_ONLY, *PANELS["Divert backend (Windows, Linux eBPF)"]),
    "windows": (*NFQUEUE_ONLY, *PANELS["FreeBSD"]),
}
HELP_ALL_ENV = "GOVPASS_HELP_ALL"
HELP_ALL_HINT = (
    "Options of other platforms are hidden: `govpass run --help-all` "
    f"(or {HELP_ALL_ENV}=1) lists them all."
)


def hidden_here(name: str, platform: str | None = None) -> bool:
    """Whether the flag of setting ``name`` is left out of --help on this platform."""
    if os.environ.get(HELP_ALL_ENV, "") not in ("", "0"):
        return False
    return name in PLATFORM_SETTINGS.get(host_os.os_name(platform), ())


def _default_text(s: Setting) -> str:
    d = s.default
    if isinstance(d, tuple):
        return ",".join(d) if d else "none"
    if d == "":
        return "none"
    if s.name in ("mark", "watch-mark"):
        return hex(d)
    if s.name == "workers":
        return "0 = one per CPU core"
    if isinstance(d, bool):
        return "on" if d else "off"
    return str(d)


def _option(s: Setting) -> tuple[Any, Any]:
    # Choices in the text, which wraps at spaces (a metavar column would cut them mid-word).
    choices = f"one of {', '.join(s.choices)}; " if s.kind == "choice" else ""
    help_text = escape(f"{s.help}. [{choices}default: {_default_text(s)}; env {s.env}]")
    common: dict[str, Any] = {
        "help": help_text,
        "show_default": False,
        "rich_help_panel": PANEL_OF.get(s.name, "Options"),
        "hidden": hidden_here(s.name),
    }
    if s.kind == "bool":
        return bool | None, typer.Option(None, f"--{s.name}/--no-{s.name}", **common)
    return str | None, typer.Option(None, f"--{s.name}", metavar=_metavar(s), **common)


def _metavar(s: Setting) -> str:
    metavars = {"int": "INT", "float": "NUM", "list": "LIST", "str": "TEXT", "choice": "CHOICE"}
    return {**metavars, "address": "ADDR:PORT"}.get(s.kind, "TEXT")


def with_settings(names: Iterable[str] | None = None) -> Callable[[Callable[..., Any]], Any]:
    """Adds one option per setting (plus --config) to a command; the command
    receives them as `flags` (setting name -> raw value, None when not given)
    and `config_file`."""
    chosen = [BY_NAME[n] for n in names] if names is not None else list(SETTINGS)

    def deco(fn: Callable[..., Any]) -> Any:
        sig = inspect.signature(fn)
        # Real annotation objects (the command's module may use postponed
        # annotations, which typer would otherwise resolve in this module).
        hints = typing.get_type_hints(fn, include_extras=True)
        own = [
            p.replace(annotation=hints.get(n, p.annotation))
            for n, p in sig.parameters.items()
            if n not in ("flags", "config_file")
        ]
        params = list(own)
        annotations: dict[str, Any] = {p.name: p.annotation for p in own}
        params.append(
            inspect.Parameter(
                "config_file",
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(
                    None,
                    "--config",
                    help=escape(
                        "TOML config file: keys spelled as the flags "
                        "(split-chunk = 5), optionally under a [govpass] table"
                    ),
                    # govpass reads and checks the file itself (regular files only,
                    # one line for each failure); click's checks print three.
                    exists=False,
                    dir_okay=True,
                    readable=False,
                    rich_help_panel="Output",
                ),
                annotation=Path | None,
            )
        )
        annotations["config_file"] = Path | None
        for s in chosen:
            annotation, default = _option(s)
            params.append(
                inspect.Parameter(
                    s.attr, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
                )
            )
            annotations[s.attr] = annotation
        attrs = {s.attr: s.name for s in chosen}

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            flags = {attrs[k]: kwargs.pop(k) for k in list(kwargs) if k in attrs}
            return fn(flags=flags, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = annotations
        return wrapper

    return deco


# pydantic (typer's validation library) starts a message from a validator so.
_VALIDATION_PREFIX = re.compile(r"\b(?:Value|Assertion) error, ")
USAGE_LIMIT = 400
"""Most characters of a usage error line (it may quote what was typed)."""


def usage_line(message: str, command: str | None) -> str:
    """A command-line usage error as one line: the library's wording without its
    validation prefix, control characters escaped, length bounded, and where
    the help is."""
    text = " ".join(_VALIDATION_PREFIX.sub("", message).split())
    text = escape_text(text, USAGE_LIMIT)
    hint = f" (see '{escape_text(command, 80)} --help')" if command else ""
    return f"govpass: {text}{hint}"
