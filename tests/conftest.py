"""Platform markers: a test marked ``linux_only`` is skipped, with its reason, on
other platforms (the Windows tier, ci/windows.sh, runs the same modules)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Modules whose every test needs root and network namespaces, marked here by
# place so that a new module there cannot slip into the root-free tier
# (`pytest -m "not netns and not root"`); elsewhere modules mark themselves.
NETNS_PLACES = (
    "e2e/",
    "e2e_targeting/",
    "bpf/test_ksplit.py",
    "bpf/test_ksplit_engine.py",
    "bpf/test_prefilter.py",
)
_TESTS = Path(__file__).resolve().parent


def _mark_by_place(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            where = Path(item.fspath).resolve().relative_to(_TESTS).as_posix()
        except ValueError:
            continue
        if where.startswith(NETNS_PLACES) and item.get_closest_marker("netns") is None:
            item.add_marker(pytest.mark.netns)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    _mark_by_place(items)
    if sys.platform.startswith("linux"):
        return
    skip = pytest.mark.skip(reason=f"linux_only: not on {sys.platform}")
    for item in items:
        if item.get_closest_marker("linux_only") is not None:
            item.add_marker(skip)
