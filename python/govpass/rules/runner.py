"""The only place where rule commands touch the system.

Planning code returns argv lists; a :class:`Runner` executes them.  The optional
``prefix`` (for example ``["ip", "netns", "exec", "lab1"]``) runs every command
somewhere else, which is how the tests keep their rules inside a namespace.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from govpass.errors import FirewallError

COMMAND_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def error_line(self) -> str:
        """One line: the command, its exit status and the gist of its stderr."""
        detail = " | ".join(line.strip() for line in self.stderr.splitlines() if line.strip())
        if not detail:
            detail = self.stdout.strip().splitlines()[0] if self.stdout.strip() else "no output"
        cmd = shlex.join(self.argv)
        return f"`{cmd}` failed (exit {self.returncode}): {detail}"


class Runner:
    """Runs argv lists, optionally behind a fixed prefix."""

    def __init__(self, prefix: Sequence[str] = ()) -> None:
        self.prefix: tuple[str, ...] = tuple(prefix)

    def __repr__(self) -> str:
        return f"Runner(prefix={list(self.prefix)!r})"

    def which(self, program: str) -> str | None:
        # `ip netns exec` keeps the mount namespace, so PATH lookup here is valid there.
        return shutil.which(program)

    def run(
        self, argv: Sequence[str], *, input_text: str | None = None, check: bool = True
    ) -> CommandResult:
        full = (*self.prefix, *argv)
        try:
            proc = subprocess.run(
                full,
                input=input_text,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
        except FileNotFoundError:
            result = CommandResult(tuple(argv), 127, "", f"{full[0]}: command not found")
        except subprocess.TimeoutExpired:
            result = CommandResult(tuple(argv), 124, "", f"timed out after {COMMAND_TIMEOUT_S}s")
        else:
            result = CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
        if check and not result.ok:
            raise FirewallError(result.error_line())
        return result
