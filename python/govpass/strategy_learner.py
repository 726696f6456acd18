"""Per-host adaptive strategies (``--strategy auto``): the parent's learner,
its state file, and the profiles the workers build from that file.

Every host starts with the configured split (today's behaviour). The
workers' engines watch every flow (watching profiles) and report one verdict
each: failed (retransmitted hello, RST) or worked (server data). On a
failure the host moves one step along its steps: the configured split, no
split, then the ``strategy-ladder`` (cheapest to heaviest). A success keeps
the step; a host that once worked unsplit goes back to no split when a split
fails (some servers break on splits). A host that fails at every step is
unfixable for ``strategy-unfixable-time`` seconds: it gets the configured
split, is no longer watched (no thrashing), and is logged once.

The learner writes what it knows to the state file (atomically, only valid
host names and known strategies); the workers' :class:`StrategyFeed` reloads
it off the packet loop and swaps the profiles in. Verdicts about a step the
host has already left (flows started before the change) are ignored.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from govpass import safetext
from govpass.errors import ConfigError
from govpass.safefile import STATE_MODE, UnsafePathError, write_atomic
from govpass.strategy import Strategy

VERSION = 1
PREFIX = "strategy:"
NEW = PREFIX + "new"  # the catch-all: hosts not learned yet
UNFIXABLE = PREFIX + "unfixable"
NONE_LABEL = "none"  # no split
MAX_STATE_BYTES = 16 * 1024 * 1024
DEFAULT_STATE = "/var/lib/govpass/strategies.json"


def steps_of(start: Strategy, ladder: Sequence[Strategy]) -> tuple[Strategy | None, ...]:
    """The order a failing host goes through: the configured split, no split, the ladder."""
    out: list[Strategy | None] = [start, None]
    out += [s for s in ladder if s not in out]
    return tuple(out)


def label_of(step: Strategy | None) -> str:
    return NONE_LABEL if step is None else step.label


@dataclass
class HostState:
    step: int  # index into the steps
    plain_ok: bool = False  # it worked once without a split
    unfixable_until: float | None = None  # wall clock


class StrategyLearner:
    """Verdicts in, per-host steps out. `clock` is wall-clock seconds (the state
    file outlives the process, so unfixable deadlines are absolute times)."""

    def __init__(
        self,
        steps: Sequence[Strategy | None],
        unfixable_time: float = 3600.0,
        log: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        max_hosts: int = 65536,
    ) -> None:
        self.steps = tuple(steps)
        self.labels = tuple(label_of(s) for s in self.steps)
        self.unfixable_time = unfixable_time
        self.log = log
        self.clock = clock
        self.max_hosts = max_hosts
        self.hosts: dict[str, HostState] = {}
        self.changes = 0
        self.rejected = 0
        self.stale = 0

    def profile_of(self, host: str) -> str:
        """The name of the profile the workers use for `host` now."""
        st = self.hosts.get(host)
        if st is None:
            return NEW
        if st.unfixable_until is not None:
            return UNFIXABLE
        if st.step == 0:
            return NEW
        return PREFIX + self.labels[st.step]

    def observe(self, profile: str, host: str, failed: bool) -> bool:
        """One verdict; True when the host's strategy changed."""
        name = safetext.host_name(host)
        if name is None:
            self.rejected += 1
            if self.rejected == 1:
                self._log(
                    f"strategy auto: ignoring {safetext.quoted(host)}: not a valid host name "
                    "(later ones are only counted: strategy_rejected in stats)"
                )
            return False
        if profile != self.profile_of(name) or profile == UNFIXABLE:
            self.stale += 1  # a flow that started under an earlier strategy
            return False
        st = self.hosts.get(name)
        if not failed:
            if st is not None and self.steps[st.step] is None:
                st.plain_ok = True
            elif st is None and self.steps[0] is None:
                self._put(name, HostState(0, plain_ok=True))
            return False
        if st is None:
            st = HostState(0)
            self._put(name, st)
        current = self.steps[st.step]
        if current is not None and st.plain_ok:
            st.step = self.steps.index(None)
        elif st.step + 1 < len(self.steps):
            st.step += 1
        else:
            st.unfixable_until = self.clock() + self.unfixable_time
            self._log(
                f"strategy auto: {name} fails with every strategy ({len(self.steps)} tried); "
                f"unfixable for {self.unfixable_time:g} s (the censor may block the address "
                "or reassemble the stream)"
            )
        self.changes += 1
        return True

    def expire(self) -> bool:
        """Unfixable hosts whose time is over start again; True when any did."""
        now = self.clock()
        done = [h for h, st in self.hosts.items() if st.unfixable_until is not None]
        done = [h for h in done if (self.hosts[h].unfixable_until or 0) <= now]
        for h in done:
            del self.hosts[h]
        return bool(done)

    def _put(self, host: str, st: HostState) -> None:
        self.hosts[host] = st
        while len(self.hosts) > self.max_hosts:
            del self.hosts[next(iter(self.hosts))]

    def counts(self) -> dict[str, int]:
        """Hosts per profile (strategy), for `govpass stats`."""
        out: dict[str, int] = {}
        for host in self.hosts:
            key = self.profile_of(host).removeprefix(PREFIX)
            out[key] = out.get(key, 0) + 1
        return out

    def stats(self) -> dict[str, int]:
        return {
            "strategy_hosts": len(self.hosts),
            "strategy_changes": self.changes,
            "strategy_unfixable": sum(
                1 for st in self.hosts.values() if st.unfixable_until is not None
            ),
            "strategy_rejected": self.rejected,
            "strategy_stale": self.stale,
        }

    # ------------------------------------------------------------- state file

    def to_json(self) -> dict[str, Any]:
        hosts: dict[str, Any] = {}
        for host, st in self.hosts.items():
            entry: dict[str, Any] = {"strategy": self.labels[st.step]}
            if st.plain_ok:
                entry["plain_ok"] = True
            if st.unfixable_until is not None:
                entry["unfixable_until"] = st.unfixable_until
            hosts[host] = entry
        return {"govpass": "strategies", "version": VERSION, "hosts": hosts}

    def load(self, data: Any) -> int:
        """Takes the hosts of a state file's JSON (entries that are not valid, or
        name a strategy not in the steps, are skipped); how many were taken.
        Raises ValueError when it is not a govpass strategy state at all."""
        hosts = parse_state(data)
        taken = 0
        for host, (label, plain_ok, until) in hosts.items():
            if label not in self.labels:
                continue  # the ladder changed since
            self._put(host, HostState(self.labels.index(label), plain_ok, until))
            taken += 1
        return taken

    def save(self, path: Path) -> None:
        write_atomic(path, json.dumps(self.to_json(), sort_keys=True) + "\n", STATE_MODE)

    def _log(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)


def parse_state(data: Any) -> dict[str, tuple[str, bool, float | None]]:
    """host -> (strategy label, plain_ok, unfixable_until) of a state file's JSON;
    invalid entries are skipped. ValueError: not a govpass strategy state."""
    if (
        not isinstance(data, dict)
        or data.get("govpass") != "strategies"
        or data.get("version") != VERSION
        or not isinstance(data.get("hosts"), dict)
    ):
        raise ValueError("not a govpass strategy state (version 1)")
    out: dict[str, tuple[str, bool, float | None]] = {}
    for host, entry in data["hosts"].items():
        name = safetext.host_name(host) if isinstance(host, str) else None
        if name is None or name != host or not isinstance(entry, dict):
            continue
        label = entry.get("strategy")
        if not isinstance(label, str) or not _known_label(label):
            continue
        until = entry.get("unfixable_until")
        if until is not None and (isinstance(until, bool) or not isinstance(until, int | float)):
            continue
        out[name] = (label, entry.get("plain_ok") is True, None if until is None else float(until))
    return out


def _known_label(label: str) -> bool:
    if label == NONE_LABEL:
        return True
    try:
        return Strategy.from_text(label).label == label
    except ConfigError:
        return False


def read_state(path: Path) -> Any:
    """The JSON of a state file (None when there is none). Refuses symlinks and
    files that are not regular or too large (OSError / ValueError)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        raw = f.read(MAX_STATE_BYTES + 1)
    if len(raw) > MAX_STATE_BYTES:
        raise ValueError(f"larger than {MAX_STATE_BYTES} bytes")
    return json.loads(raw.decode("utf-8"))


def load_learner(
    path: Path, learner: StrategyLearner, log: Callable[[str], None] | None = None
) -> None:
    """Fills `learner` from the state file; a bad or foreign file is ignored with one line."""
    try:
        data = read_state(path)
        if data is None:
            return
        taken = learner.load(data)
    except (OSError, ValueError, UnicodeDecodeError, UnsafePathError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        if log is not None:
            log(f"strategy auto: ignoring state file {safetext.quoted(str(path))}: {why}")
        return
    if log is not None:
        log(f"strategy auto: {taken} host(s) from {safetext.quoted(str(path))}")


# ------------------------------------------------------------------ worker side


def build_profiles(
    hosts: dict[str, tuple[str, bool, float | None]],
    start: Strategy,
    now: float | None = None,
) -> list[Any]:
    """The engine's profiles for the hosts of a state file: one watching profile
    per strategy in use (exact names), unfixable hosts with the configured split
    and no watch, and a watching catch-all with the configured split."""
    from govpass._core import HostList, Profile

    now = time.time() if now is None else now
    by_label: dict[str, list[str]] = {}
    unfixable: list[str] = []
    for host, (label, _plain, until) in hosts.items():
        if until is not None and until > now:
            unfixable.append(host)
        elif until is None and label != start.label:
            by_label.setdefault(label, []).append(host)
    profiles = []
    if unfixable:
        profiles.append(_split_profile(UNFIXABLE, start, [HostList(_exact(unfixable))], False))
    for label, names in sorted(by_label.items()):
        lists = [HostList(_exact(names))]
        if label == NONE_LABEL:
            profiles.append(Profile(PREFIX + label, action="pass", hosts=lists, watch=True))
        else:
            profiles.append(_split_profile(PREFIX + label, Strategy.from_text(label), lists, True))
    profiles.append(_split_profile(NEW, start, [], True))
    return profiles


def _exact(names: list[str]) -> list[str]:
    return ["^" + n for n in sorted(names)]


def _split_profile(name: str, s: Strategy, hosts: list[Any], watch: bool) -> Any:
    from govpass._core import Profile

    return Profile(
        name, split_chunk=s.chunk, split_positions=list(s.positions), hosts=hosts, watch=watch
    )


class StrategyFeed:
    """A worker's reloads of the state file, on a thread of their own: the packet
    loop's timer only swaps in profiles that are ready (:meth:`take`)."""

    def __init__(
        self, path: Path, start: Strategy, apply: Callable[[list[Any]], None], every: float = 0.2
    ) -> None:
        self.path = path
        self.start_strategy = start
        self.apply = apply
        self.every = every
        self.reloads = 0
        self.failures = 0
        self._sig: tuple[int, int, int] | None = None
        self._ready: list[Any] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="govpass-strategies", daemon=True)

    def start(self) -> StrategyFeed:
        self._thread.start()
        return self

    def poll(self) -> None:
        try:
            st = os.stat(self.path)
            sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            sig = (0, 0, 0)
        if sig == self._sig:
            return
        self._sig = sig
        try:
            data = read_state(self.path)
            hosts = {} if data is None else parse_state(data)
            profiles = build_profiles(hosts, self.start_strategy)
        except Exception:  # whatever the file holds, the thread lives on: the profiles stay
            self.failures += 1
            return
        with self._lock:
            self._ready = profiles

    def take(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, None
        if ready is not None:
            self.apply(ready)
            self.reloads += 1

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.poll()

    def close(self) -> None:
        self._stop.set()


class StrategyKeeper:
    """The learner of one `govpass run --strategy auto` and its state file: loaded at
    the start, written on every change, re-read when changed from outside
    (`govpass strategy clear` removes it: everything is learned afresh)."""

    def __init__(
        self,
        path: Path,
        start: Strategy,
        ladder: Sequence[Strategy],
        unfixable_time: float,
        log: Callable[[str], None],
    ) -> None:
        from govpass.safefile import make_directory

        self.path = path
        self.start_strategy = start
        self.log = log
        make_directory(path.parent, "strategy-state directory")
        self.learner = StrategyLearner(steps_of(start, ladder), unfixable_time, log)
        load_learner(path, self.learner, log)
        self.learner.expire()
        self._sig: tuple[int, int, int] | None = None
        self._error = False
        self.save()
        log("strategy auto: steps " + ", ".join(self.learner.labels) + f"; state in {path}")

    def save(self) -> None:
        """Writes the state file (workers reload it); a failure is logged once."""
        try:
            self.learner.save(self.path)
            self._sig = _signature(self.path)
            self._error = False
        except (OSError, UnsafePathError) as e:
            if not self._error:
                self.log(f"strategy auto: cannot write {self.path}: {e}")
            self._error = True

    def observe(self, events: Sequence[tuple[str, str, bool]]) -> bool:
        """The engines' verdicts; True (and the file written) when a host moved."""
        changed = False
        for profile, host, failed in events:
            changed |= self.learner.observe(profile, host, failed)
        if changed:
            self.save()
        return changed

    def tick(self) -> bool:
        """Ends unfixable periods and takes in a file changed from outside; True when
        the strategies changed."""
        changed = self.learner.expire()
        if _signature(self.path) != self._sig:
            self.learner.hosts.clear()
            load_learner(self.path, self.learner, self.log)
            changed = True
        if changed:
            self.save()
        return changed

    def profiles(self) -> list[Any]:
        """The engine profiles for what is known now (a single-process backend's
        engine takes them directly, without the file)."""
        return build_profiles(parse_state(self.learner.to_json()), self.start_strategy)

    def stats(self) -> dict[str, Any]:
        return {**self.learner.stats(), "counts": self.learner.counts()}


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
