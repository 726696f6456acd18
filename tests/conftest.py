"""Platform markers: a test marked ``linux_only`` is skipped, with its reason, on
other platforms (the Windows tier, ci/windows.sh, runs the same modules)."""

from __future__ import annotations

import sys

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if sys.platform.startswith("linux"):
        return
    skip = pytest.mark.skip(reason=f"linux_only: not on {sys.platform}")
    for item in items:
        if item.get_closest_marker("linux_only") is not None:
            item.add_marker(skip)
