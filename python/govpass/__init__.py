"""govpass: split the first TLS ClientHello of outbound HTTPS flows into several
TCP segments, so DPI that reads the server name from one packet does not see it.

The engine (``govpass._core``) is sans-I/O: capture backends feed it packets and
carry out the actions it returns.
"""

from govpass._core import ACCEPT, DROP, RELEASE, SEND, Action, Engine, EngineConfig
from govpass._core import __version__ as __version__

__all__ = ["ACCEPT", "DROP", "RELEASE", "SEND", "Action", "Engine", "EngineConfig"]
