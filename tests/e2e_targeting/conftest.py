"""Fixtures of the targeting end-to-end tests (helpers in ``targeting_support``)."""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from targeting_support import _root, lab  # noqa: E402, F401
