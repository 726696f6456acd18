"""Fixtures of the end-to-end tests; the helpers live in ``e2e_support``."""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from e2e_support import _root, host_lab, kinds, router_lab  # noqa: E402, F401
