"""The nftables tables iptables-nft creates as a side effect, and their removal.

iptables-nft keeps its rules in nftables tables named after the iptables tables
(``table ip mangle``, ``table ip6 mangle``) and creates one the first time a rule
or chain goes into it, a probe's spare chain included. Removing govpass's rules
leaves that table behind, empty, in ``nft list ruleset``. So before its probes
and rules govpass creates each absent one itself, carrying :data:`COMMENT`, and
deletes the tables with that comment once they are empty again. The mark lives
in the kernel with the table: it survives a daemon killed with SIGKILL (the next
``govpass rules remove`` or run deletes the table) and belongs to the network
namespace it is in, so no file has to say which namespace a record is about.
A table that was there before govpass, or that holds anything else by then
(someone's rules, sets, a chain policy other than accept), stays.
"""

from __future__ import annotations

from collections.abc import Iterable

from govpass.rules.runner import Runner
from govpass.rules.spec import Family

COMMENT = "govpass: created at rule install; deleted with the rules when empty"
TABLE = "mangle"
NFT_FAMILY: dict[Family, str] = {"ipv4": "ip", "ipv6": "ip6"}


def _present(runner: Runner) -> set[str] | None:
    if runner.which("nft") is None:
        return None
    res = runner.run(["nft", "list", "tables"], check=False)
    return set(res.stdout.splitlines()) if res.ok else None


def claim(families: Iterable[Family], runner: Runner) -> list[str]:
    """Creates each absent mangle table of ``families``, marked; returns their names."""
    present = _present(runner)
    if present is None:
        return []
    made = []
    for family in families:
        name = f"{NFT_FAMILY[family]} {TABLE}"
        if f"table {name}" in present:
            continue
        argv = ["nft", "add", "table", *name.split(), "{", "comment", f'"{COMMENT}";', "}"]
        if runner.run(argv, check=False).ok:
            made.append(name)
    return made


def _ours_and_empty(listing: str) -> bool:
    lines = [line.strip() for line in listing.splitlines() if line.strip()]
    if f'comment "{COMMENT}"' not in lines:
        return False
    for line in lines:
        if line.startswith(("table ", "chain ", "comment ")) or line == "}":
            continue
        if line.startswith("type ") and line.endswith("policy accept;"):
            continue  # a base chain iptables-nft made, with nothing in it
        return False
    return True


def release(runner: Runner) -> list[str]:
    """Deletes the marked mangle tables that are empty; returns their names."""
    present = _present(runner)
    if present is None:
        return []
    deleted = []
    for nft_family in NFT_FAMILY.values():
        name = f"{nft_family} {TABLE}"
        if f"table {name}" not in present:
            continue
        listing = runner.run(["nft", "list", "table", nft_family, TABLE], check=False)
        if not listing.ok or not _ours_and_empty(listing.stdout):
            continue
        if runner.run(["nft", "delete", "table", nft_family, TABLE], check=False).ok:
            deleted.append(name)
    return deleted
