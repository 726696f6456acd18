"""Auto-learned blocked hosts (zapret's auto-hostlist semantics).

Workers pass names that no list of an auto profile knows untouched and watch
them; the engine reports one verdict per watched flow: failed (the
ClientHello, or a part of it, was retransmitted ``auto-retrans`` times, a RST
came back, or no server data came within ``auto-silence`` seconds) or worked
(the server answered with data). The daemon's parent collects the
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

import json
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from govpass import safetext
from govpass._core import HostList
from govpass.errors import ConfigError
from govpass.safefile import STATE_MODE, UnsafePathError, check_directory, write_atomic
from govpass.targeting import parse_list, read_lines

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
        self.rejected = 0  # verdicts for names that are not host names

    def observe(self, profile: str, host: str, failed: bool, now: float | None = None) -> bool:
        """One verdict; True when it made the host learned (written to the file)."""
        path = self.files.get(profile)
        if path is None:
            return False
        name = safetext.host_name(host)
        if name is None:
            # The name is whatever the client sent: counted, never written; only the
            # first is logged, so a flood of them cannot flood the log.
            self.rejected += 1
            if self.rejected == 1:
                self._log(
                    f"auto: not learning {safetext.quoted(host)} (profile {profile}): not a "
                    "valid host name (later ones are only counted: auto_rejected in stats)"
                )
            return False
        host = name
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
            added = append_host(path, host)
        except (OSError, ConfigError, UnsafePathError) as e:
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
            "auto_rejected": self.rejected,
        }

    def _log(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)


def append_host(path: Path, host: str) -> bool:
    """Adds `host` (a name :func:`safetext.host_name` accepted) to the list file
    atomically (new file, then rename); False when the file already has it. A
    missing file is created with a comment header. The file keeps its mode and
    owner; a symlink there, or a directory others can write to, is refused."""
    check_directory(path.parent, "hostlist-auto directory")
    try:
        st: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise UnsafePathError(f"hostlist-auto {path}: {kind}; govpass replaces only regular files")
    lines = read_lines(path, "hostlist-auto", missing_ok=True)
    entries = {ln.split("#", 1)[0].strip().lower() for ln in lines}
    if host in entries:
        return False
    body = "\n".join(lines).rstrip("\n")
    text = (body + "\n" if body else HEADER) + host + "\n"
    if st is None:
        write_atomic(path, text, STATE_MODE)
    else:
        write_atomic(path, text, stat.S_IMODE(st.st_mode), owner=(st.st_uid, st.st_gid))
    return True


def parse_auto_list(data: bytes, where: str) -> tuple[HostList, str | None]:
    """The auto list's names, and a note when lines that do not parse were skipped.

    govpass writes this file itself; a line it wrote once may not parse any more
    (a name an older version accepted, an edit gone wrong): skipping it costs
    that one name, refusing the list would stop the daemon."""
    names: HostList = parse_list("hostlist-auto", data, where, skip_invalid=True)
    if not names.skipped:
        return names, None
    bad, count = names.skipped_lines, names.skipped
    shown = ", ".join(map(str, bad)) + (f" and {count - len(bad)} more" if count > len(bad) else "")
    return names, f"{where}: skipped {count} line(s) that do not parse (line {shown})"


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
    for path in files.values():  # refused at the start, not at the first learned name
        if path.parent.is_dir():
            check_directory(path.parent, "hostlist-auto directory")
    return AutoLearner(files, config.auto_fail_threshold, config.auto_fail_time, log)
