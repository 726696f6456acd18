"""Exceptions govpass raises on purpose; the CLI turns them into one line and an exit code.

The Rust extension raises these same classes (it imports them from here), so
this module is the one place that defines the tree.
"""


class GovpassError(Exception):
    """Base of every error govpass raises deliberately."""


class ConfigError(GovpassError, ValueError):
    """A configuration value (file, environment or flag) is invalid.

    ``field`` names the setting as users spell it (``split-chunk``), and the
    message says what would have been accepted.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class FirewallError(GovpassError):
    """A firewall command (iptables, ip6tables, nft) failed or a rule spec is invalid."""


class RulesStillPresent(FirewallError):
    """govpass rules found again right after they were removed."""


class BackendError(GovpassError):
    """A capture backend cannot be opened or used (no permission, queue taken, no driver)."""


class EngineError(GovpassError):
    """The engine reported an internal failure that it could not contain."""
