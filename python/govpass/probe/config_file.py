"""``--write-config``: a TOML file ``govpass run --config FILE`` uses as is.

One ``[[profile]]`` per fixed host (its name and strategy), one ``pass`` profile per
host that was not blocked (it works unsplit, and some servers break on any split),
then a catch-all profile that keeps run's default strategy for everything else. The
file is written to a temporary name created with O_EXCL|O_NOFOLLOW in the same
directory and renamed over the target: a reader never sees half a file, and a symlink
planted at either name is never followed (the rename replaces a symlink at the
target, not what it points to).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from govpass import safefile
from govpass.errors import ConfigError
from govpass.probe.search import FIXED, OK, HostResult

MODE = 0o644
# What a host list accepts, and what can sit in a TOML string unquoted by escapes.
_HOST = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")
CATCH_ALL = "default"


def _toml_str(value: str) -> str:
    # JSON string syntax with ASCII only is valid TOML basic-string syntax.
    return json.dumps(value, ensure_ascii=True)


def _profile_name(host: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]", "-", host)[:56] or "host"
    name, n = f"probe-{base}", 2
    while name in used or name == CATCH_ALL:
        name, n = f"probe-{base}-{n}", n + 1
    used.add(name)
    return name


def render(results: Sequence[HostResult]) -> str:
    lines = [
        "# Written by `govpass probe`: one profile per host it fixed or found unblocked,",
        "# then the default for everything else.",
        "# Use with: govpass run --config THIS_FILE",
        "",
    ]
    used: set[str] = set()
    for r in results:
        if r.verdict not in (FIXED, OK) or (r.verdict == FIXED and r.strategy is None):
            continue
        if not _HOST.match(r.host):
            continue  # the probe only fixes names it could connect to; belt and braces
        lines += ["[[profile]]", f"name = {_toml_str(_profile_name(r.host, used))}"]
        lines.append(f"hosts = [{_toml_str(r.host)}]")
        if r.strategy is None:
            lines += ['action = "pass"  # not blocked: left unsplit', ""]
            continue
        lines.append('action = "split"')
        for key, value in r.strategy.profile_keys().items():
            if isinstance(value, int):
                lines.append(f"{key} = {value}")
            else:
                lines.append(f"{key} = [{', '.join(_toml_str(v) for v in value)}]")
        lines.append("")
    lines += [
        "# Every other flow: split as govpass run does by default.",
        "[[profile]]",
        f"name = {_toml_str(CATCH_ALL)}",
        'action = "split"',
        "",
    ]
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` (mode 0644) in one step, never through a symlink."""
    if path.is_dir():
        raise ConfigError(f"--write-config {path}: is a directory", field="write-config")
    try:
        safefile.write_atomic(path, text, mode=MODE)
    except OSError as e:
        raise ConfigError(
            f"--write-config {path}: cannot write: {e.strerror}", field="write-config"
        ) from None
