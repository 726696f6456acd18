"""Replacing one `## Heading` section of BENCHMARKS.md, shared by the benchmark scripts."""

from __future__ import annotations

import re
from pathlib import Path


def write_section(path: Path, heading: str, section: str) -> None:
    """Replaces the `## {heading}` section of `path` with `section` (appended
    when absent). The file is re-read right before writing: other benchmarks
    may have rewritten their own sections meanwhile."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")
