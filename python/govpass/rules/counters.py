"""How many packets govpass's queue rules sent to a queue, from the rules' own
counters (taken or passed by: see :mod:`govpass.queue_counters`)."""

from __future__ import annotations

import re

from govpass.rules import iptables as ipt
from govpass.rules import nftables as nft
from govpass.rules.manager import InstallResult
from govpass.rules.runner import Runner

# nft lists a rule's counter before its queue statement (nftables.queue_statement).
_NFT_QUEUE_COUNTER = re.compile(r"\bcounter packets (\d+) bytes \d+ queue ")
_SAVE_COUNTER = re.compile(r"\[(\d+):\d+\] ")


def nft_queue_packets(listing: str) -> int | None:
    """The sum of the queue rules' counters in `nft list table` output (None: no
    counter there, as in rules an older govpass installed)."""
    found = _NFT_QUEUE_COUNTER.findall(listing)
    return sum(int(n) for n in found) if found else None


def iptables_queue_packets(save_text: str) -> int | None:
    """The sum of the NFQUEUE rules' counters of govpass's chains in `iptables-save -c`."""
    total = None
    for line in ipt.mangle_section(save_text):
        m = _SAVE_COUNTER.match(line)
        if m is None:
            continue
        argv = line[m.end() :].split()
        if len(argv) > 1 and argv[0] == "-A" and argv[1] in ipt.OUR_CHAINS and "NFQUEUE" in argv:
            total = (total or 0) + int(m.group(1))
    return total


def queue_packets(installed: InstallResult, runner: Runner | None = None) -> int | None:
    """Packets the rules `installed` sent to NFQUEUE so far; None when they cannot be
    read (a command failed, or its output had no counter)."""
    runner = runner or Runner()
    if installed.backend == "nftables":
        res = runner.run(["nft", "list", "table", nft.TABLE_FAMILY, nft.TABLE_NAME], check=False)
        return nft_queue_packets(res.stdout) if res.ok else None
    binaries = sorted(
        {argv[0] for argv in installed.commands if argv[0].startswith(("iptables", "ip6tables"))}
    )
    total = 0
    for binary in binaries:
        res = runner.run([f"{binary}-save", "-c", "-t", ipt.TABLE], check=False)
        n = iptables_queue_packets(res.stdout) if res.ok else None
        if n is None:
            return None
        total += n
    return total if binaries else None
