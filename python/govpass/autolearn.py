"""Auto-learned blocked hosts (zapret's auto-hostlist semantics).

Workers pass names that no list of an auto profile knows untouched and watch
them; the engine reports one verdict per watched flow: failed (the
ClientHello was retransmitted ``auto-retrans`` times, or a RST came back) or
worked (the server answered with data). The daemon's parent collects the
verdicts of all workers here:

* a failure within ``fail_time`` seconds of the previous one counts up; after
  a longer pause the count starts again at one;
* a success forgets the count (the failure was not a block);
* at ``threshold`` failures the name is appended to the profile's auto list
  file, which the workers' list watchers then load: the name is split from
  then on, by every worker.

Verdicts travel from workers to the parent over one pipe, one JSON line per
verdict (:func:`encode_events` / :class:`EventReader`); lines are shorter than
PIPE_BUF, so lines of different workers never interleave.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from govpass._core import HostList
from govpass.errors import ConfigError
from govpass.targeting import read_lines

HEADER = (
    "# govpass auto host list: names that failed without a split and are split from now on.\n"
    "# One name per line (subdomains match, ^name exact); edit freely, govpass reloads it.\n"
)
MAX_LINE = 1024  # well below PIPE_BUF (4096): a write of one line is atomic


@dataclass
class _Count:
    failures: int
    last: float


class AutoLearner:
    """Counts failures per (profile, host) and writes learned names to the auto files."""

    def __init__(
        self,
        files: Mapping[str, Path],
        threshold: int = 3,
        fail_time: float = 60.0,
        log: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_tracked: int = 65536,
    ) -> None:
        self.files = dict(files)
        self.threshold = threshold
        self.fail_time = fail_time
        self.log = log
        self.clock = clock
        self.max_tracked = max_tracked
        self.counts: dict[tuple[str, str], _Count] = {}
        self.failures = 0
        self.successes = 0
        self.learned = 0
        self.write_errors = 0

    def observe(self, profile: str, host: str, failed: bool, now: float | None = None) -> bool:
        """One verdict; True when it made the host learned (written to the file)."""
        path = self.files.get(profile)
        host = host.strip().lower().rstrip(".")
        if path is None or not host:
            return False
        key = (profile, host)
        if not failed:
            self.successes += 1
            self.counts.pop(key, None)
            return False
        self.failures += 1
        now = self.clock() if now is None else now
        count = self.counts.pop(key, None)
        if count is not None and now - count.last <= self.fail_time:
            count.failures += 1
            count.last = now
        else:
            count = _Count(1, now)
        if count.failures >= self.threshold:
            return self._learn(profile, host, path, count.failures)
        self.counts[key] = count  # re-inserted: the dict stays ordered by last failure
        if len(self.counts) > self.max_tracked:
            self._trim(now)
        return False

    def _trim(self, now: float) -> None:
        for key in [k for k, c in self.counts.items() if now - c.last > self.fail_time]:
            del self.counts[key]
        while len(self.counts) > self.max_tracked:
            del self.counts[next(iter(self.counts))]

    def _learn(self, profile: str, host: str, path: Path, failures: int) -> bool:
        try:
            HostList([host])
        except ConfigError:
            self._log(f"auto: not learning {host!r} (profile {profile}): not a valid host name")
            return False
        try:
            added = append_host(path, host)
        except (OSError, ConfigError) as e:
            self.write_errors += 1
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            self._log(f"auto: cannot add {host} to {path}: {why}")
            return False
        if added:
            self.learned += 1
            self._log(
                f"auto: learned {host} (profile {profile}): {failures} failures "
                f"within {self.fail_time:g} s; added to {path}"
            )
        return added

    def stats(self) -> dict[str, int]:
        return {
            "auto_learned": self.learned,
            "auto_counting": len(self.counts),
            "auto_write_errors": self.write_errors,
        }

    def _log(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)


def append_host(path: Path, host: str) -> bool:
    """Adds `host` to the list file atomically (new file, then rename); False when
    the file already has it. A missing file is created with a comment header."""
    lines = read_lines(path, "hostlist-auto", missing_ok=True)
    entries = {ln.split("#", 1)[0].strip().lower() for ln in lines}
    if host in entries:
        return False
    body = "\n".join(lines).rstrip("\n")
    text = (body + "\n" if body else HEADER) + host + "\n"
    mode = 0o644
    with contextlib.suppress(OSError):
        mode = os.stat(path).st_mode & 0o7777
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


# ------------------------------------------------------------------ worker -> parent


def encode_events(events: Iterable[tuple[str, str, bool]]) -> list[bytes]:
    """One JSON line per verdict (lines too long for an atomic write are skipped)."""
    out = []
    for profile, host, failed in events:
        line = (json.dumps([profile, host, bool(failed)]) + "\n").encode()
        if len(line) <= MAX_LINE:
            out.append(line)
    return out


def send_events(fd: int, events: Iterable[tuple[str, str, bool]]) -> int:
    """Writes verdicts to the (non-blocking) pipe; returns how many were dropped
    because the pipe was full: a worker never waits for the parent."""
    dropped = 0
    for line in encode_events(events):
        try:
            os.write(fd, line)
        except (BlockingIOError, BrokenPipeError):
            dropped += 1
    return dropped


class EventReader:
    """Splits the bytes read from the pipe into verdicts (a read may end mid-line)."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[tuple[str, str, bool]]:
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()
        out = []
        for line in lines:
            try:
                profile, host, failed = json.loads(line)
            except (ValueError, TypeError):
                continue
            if isinstance(profile, str) and isinstance(host, str):
                out.append((profile, host, bool(failed)))
        return out


def learner_for(config: Any, log: Callable[[str], None] | None = None) -> AutoLearner | None:
    """The learner of a configuration, or None when no profile learns."""
    from govpass.targeting import specs_from_config

    files = {s.name: s.auto for s in specs_from_config(config) if s.auto is not None}
    if not files:
        return None
    return AutoLearner(files, config.auto_fail_threshold, config.auto_fail_time, log)
