"""Packet capture inside a lab namespace with tcpdump (``-U --immediate-mode``).

Use through :meth:`govpass.lab.Lab.capture`; the file is complete once the ``with``
block has exited (tcpdump is stopped with SIGINT, which makes it flush and close).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from govpass.lab import wirecheck
from govpass.lab.netns import LabError, Processes, Spawned, wait_for


class Capture:
    def __init__(
        self,
        procs: Processes,
        role: str,
        ns: str,
        iface: str,
        path: Path,
        bpf: str = "tcp port 443",
    ) -> None:
        self.procs = procs
        self.role = role
        self.ns = ns
        self.iface = iface
        self.path = path
        self.bpf = bpf
        self.log = path.with_suffix(".tcpdump.log")
        self.summary = ""
        self._proc: Spawned | None = None

    def argv(self) -> list[str]:
        # -Z root: tcpdump otherwise drops to its own user before opening the file,
        # which then cannot write into the lab's root-only work directory.
        return [
            "tcpdump",
            "-i",
            self.iface,
            "-n",
            "-s",
            "0",
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
            "-w",
            str(self.path),
            *self.bpf.split(),
        ]

    def start(self, timeout: float = 5.0) -> None:
        self._proc = self.procs.spawn(self.role, self.ns, self.argv(), self.log)
        proc = self._proc

        def listening() -> bool:
            if proc.popen.poll() is not None:
                raise LabError(f"tcpdump exited: {self.log.read_text(errors='replace')}")
            return "listening on" in self.log.read_text(errors="replace")

        wait_for(listening, timeout, f"tcpdump on {self.ns}/{self.iface}")

    def stop(self, settle: float = 0.2) -> str:
        """Stop tcpdump after ``settle`` seconds (for in-flight packets); its summary line."""
        if self._proc is None:
            return self.summary
        time.sleep(settle)
        self.procs.kill(self._proc.pid, grace=3.0, sig=signal.SIGINT)
        self._proc = None
        text = self.log.read_text(errors="replace")
        self.summary = next((ln for ln in text.splitlines() if "captured" in ln), "").strip()
        return self.summary

    def flows(self, port: int = 443) -> list[wirecheck.FlowReport]:
        """Client→server flow reports of the finished capture (see :mod:`wirecheck`)."""
        return wirecheck.analyze(self.path, port)
