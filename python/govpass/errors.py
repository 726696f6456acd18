"""Exceptions govpass raises on purpose; the CLI turns them into one line and an exit code."""


class GovpassError(Exception):
    """Base of every error govpass raises deliberately."""


class FirewallError(GovpassError):
    """A firewall command (iptables, ip6tables, nft) failed or a rule spec is invalid."""
