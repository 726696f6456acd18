"""Per-host adaptive strategies (``--strategy auto``): the parent's learner,
its state file, and the profiles the workers build from that file.

Every host starts with the configured split (today's behaviour). The
workers' engines watch every flow (watching profiles) and report one verdict
each: failed (hello or a part of it retransmitted, RST, or silence: no server
data within ``auto-silence``) or worked (server data). On a
failure the host moves one step along its steps: the configured split, no
split, then the ``strategy-ladder`` (cheapest to heaviest). A success keeps
the step; a host that once worked unsplit goes back to no split when a split
fails (some servers break on splits), and when no split then fails as well it
is no longer taken to work unsplit and goes on after the split it left. A
host that fails at every step is unfixable for ``strategy-unfixable-time``
seconds: it gets the configured split, is no longer watched (no thrashing),
and is logged once.

The learner writes what it knows to the state file (atomically, only valid
host names and known strategies); the workers' :class:`StrategyFeed` reloads
it off the packet loop and swaps the profiles in. Verdicts about a step the
host has already left (flows started before the change) are ignored.

Learning is done per scope: `--strategy auto` itself (every host, or the
listed ones), or an auto ``[[profile]]``; a :class:`StrategyBook` holds one
learner per scope, all in one state file, and a worker's :class:`ProfileMixer`
expands each auto profile with what was learned for it.
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
NEW_LABEL = "new"  # the catch-all: hosts not learned yet
UNFIXABLE_LABEL = "unfixable"
NEW = PREFIX + NEW_LABEL
UNFIXABLE = PREFIX + UNFIXABLE_LABEL
NONE_LABEL = "none"  # no split
MAX_STATE_BYTES = 16 * 1024 * 1024
DEFAULT_STATE = "/var/lib/govpass/strategies.json"
DEFAULT_SCOPE = ""  # the state file's top-level "hosts"

# Learned state is kept per (profile, host), not per host: two auto profiles for one
# name usually differ in what they match besides the name (an interface, an address
# range), i.e. in the path and so in the censor; a strategy found on one uplink says
# nothing about the other. `--strategy auto` without [[profile]] tables has one scope,
# the top-level "hosts" of the state file, as before profiles could learn.


def prefix_of(scope: str) -> str:
    """Start of the names of a scope's engine profiles: "strategy:" for the top-level
    one, "NAME:strategy:" for [[profile]] NAME (profile names hold no ':')."""
    return PREFIX if scope == DEFAULT_SCOPE else f"{scope}:{PREFIX}"


def scope_of(profile: str) -> str | None:
    """The scope whose engine profile `profile` is, or None (not a learning profile)."""
    if profile.startswith(PREFIX):
        return DEFAULT_SCOPE
    scope, sep, rest = profile.partition(":")
    if sep and rest.startswith(PREFIX) and valid_profile_name(scope):
        return scope
    return None


def valid_profile_name(name: str) -> bool:
    from govpass.targeting import valid_name

    return valid_name(name)


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
    resume: int | None = None  # the step after the split that sent it back to no split


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
        prefix: str = PREFIX,
    ) -> None:
        self.steps = tuple(steps)
        self.prefix = prefix  # of its engine profiles' names: see prefix_of
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
        if st is None or (st.step == 0 and st.unfixable_until is None):
            return self.prefix + NEW_LABEL
        if st.unfixable_until is not None:
            return self.prefix + UNFIXABLE_LABEL
        return self.prefix + self.labels[st.step]

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
        if profile != self.profile_of(name) or profile == self.prefix + UNFIXABLE_LABEL:
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
        following = st.step + 1
        if st.plain_ok and current is not None:
            # It worked unsplit once: try that again, and come back after this split.
            st.resume, following = following, self.steps.index(None)
        elif st.plain_ok:
            # No split fails now too: it no longer counts as working unsplit (else a
            # lucky pass would send the host between "none" and one split for ever).
            st.plain_ok = False
            following = following if st.resume is None else st.resume
            st.resume = None
        if following < len(self.steps):
            st.step = following
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
            key = self.profile_of(host).removeprefix(self.prefix)
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
        return {"govpass": "strategies", "version": VERSION, "hosts": self.entries()}

    def entries(self) -> dict[str, Any]:
        """The hosts as a state file has them (its "hosts", or one of its "profiles")."""
        return {
            host: _entry(self.labels[st.step], st.plain_ok, st.unfixable_until)
            for host, st in self.hosts.items()
        }

    def load(self, data: Any) -> int:
        """Takes the hosts of a state file's JSON (entries that are not valid, or
        name a strategy not in the steps, are skipped); how many were taken.
        Raises ValueError when it is not a govpass strategy state at all."""
        return self.take(parse_state(data))

    def take(self, hosts: dict[str, tuple[str, bool, float | None]]) -> int:
        """Takes parsed hosts (see :func:`parse_state`); how many were taken."""
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


def _entry(label: str, plain_ok: bool, until: float | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"strategy": label}
    if plain_ok:
        entry["plain_ok"] = True
    if until is not None:
        entry["unfixable_until"] = until
    return entry


class StrategyBook:
    """The learners of every scope (see :data:`DEFAULT_SCOPE`) sharing one state
    file: verdicts go to the scope their engine profile names. Scopes of the file
    that no configured profile learns for any more are kept as they are."""

    def __init__(
        self,
        starts: dict[str, Strategy],
        ladder: Sequence[Strategy],
        unfixable_time: float = 3600.0,
        log: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.learners = {
            scope: StrategyLearner(
                steps_of(start, ladder), unfixable_time, log, clock, prefix=prefix_of(scope)
            )
            for scope, start in starts.items()
        }
        self.kept: dict[str, dict[str, Any]] = {}  # scopes not configured now, as read

    def owns(self, profile: str) -> bool:
        return scope_of(profile) in self.learners

    def observe(self, profile: str, host: str, failed: bool) -> bool:
        scope = scope_of(profile)
        learner = self.learners.get(scope) if scope is not None else None
        return learner is not None and learner.observe(profile, host, failed)

    def expire(self) -> bool:
        return any([lr.expire() for lr in self.learners.values()])

    def clear(self) -> None:
        for lr in self.learners.values():
            lr.hosts.clear()
        self.kept.clear()

    def counts(self) -> dict[str, int]:
        """Hosts per strategy; keyed "PROFILE:STRATEGY" for a [[profile]]'s scope."""
        out: dict[str, int] = {}
        for scope, lr in sorted(self.learners.items()):
            for label, n in lr.counts().items():
                out[label if scope == DEFAULT_SCOPE else f"{scope}:{label}"] = n
        return out

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for lr in self.learners.values():
            for key, n in lr.stats().items():
                out[key] = out.get(key, 0) + n
        return out

    def describe(self) -> str:
        """The steps of each scope, for the start's log line."""
        if list(self.learners) == [DEFAULT_SCOPE]:
            return ", ".join(self.learners[DEFAULT_SCOPE].labels)
        return "; ".join(
            f"{scope or 'listed'}: {', '.join(lr.labels)}" for scope, lr in self.learners.items()
        )

    def to_json(self) -> dict[str, Any]:
        scopes = {**self.kept, **{k: lr.entries() for k, lr in self.learners.items()}}
        data: dict[str, Any] = {
            "govpass": "strategies",
            "version": VERSION,
            "hosts": scopes.pop(DEFAULT_SCOPE, {}),
        }
        profiles = {k: v for k, v in sorted(scopes.items()) if v}
        if profiles:
            data["profiles"] = profiles
        return data

    def load(self, data: Any) -> int:
        """Takes every scope of a state file's JSON; how many hosts were taken."""
        taken = 0
        self.kept = {}
        for scope, hosts in parse_scopes(data).items():
            learner = self.learners.get(scope)
            if learner is not None:
                taken += learner.take(hosts)
            elif hosts:  # written back as read (its valid entries)
                self.kept[scope] = {h: _entry(*v) for h, v in hosts.items()}
        return taken

    def save(self, path: Path) -> None:
        write_atomic(path, json.dumps(self.to_json(), sort_keys=True) + "\n", STATE_MODE)


def parse_state(data: Any) -> dict[str, tuple[str, bool, float | None]]:
    """host -> (strategy label, plain_ok, unfixable_until) of a state file's JSON
    (its top-level "hosts"); invalid entries are skipped. ValueError: not a
    govpass strategy state."""
    return parse_scopes(data).get(DEFAULT_SCOPE, {})


def parse_scopes(data: Any) -> dict[str, dict[str, tuple[str, bool, float | None]]]:
    """State-file key -> its hosts (see :func:`parse_state`): "" for the top-level
    "hosts" (what `--strategy auto` always wrote), a profile's name for each of the
    "profiles" (auto profiles of a config file). Invalid keys and entries are skipped.
    ValueError: not a govpass strategy state."""
    if (
        not isinstance(data, dict)
        or data.get("govpass") != "strategies"
        or data.get("version") != VERSION
        or not isinstance(data.get("hosts"), dict)
    ):
        raise ValueError("not a govpass strategy state (version 1)")
    out = {DEFAULT_SCOPE: _parse_hosts(data["hosts"])}
    profiles = data.get("profiles")
    if isinstance(profiles, dict):
        for name, hosts in profiles.items():
            if isinstance(name, str) and valid_profile_name(name) and isinstance(hosts, dict):
                out[name] = _parse_hosts(hosts)
    return out


def _parse_hosts(raw: dict[Any, Any]) -> dict[str, tuple[str, bool, float | None]]:
    out: dict[str, tuple[str, bool, float | None]] = {}
    for host, entry in raw.items():
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
    path: Path,
    learner: StrategyLearner | StrategyBook,
    log: Callable[[str], None] | None = None,
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

Hosts = dict[str, tuple[str, bool, float | None]]


def default_part(start: Strategy) -> Any:
    """`--strategy auto` without lists: one catch-all profile learning for every host."""
    from govpass.targeting import Part, ProfileSpec

    spec = ProfileSpec(
        name="default", split_chunk=start.chunk, split_pos=start.positions, strategy="auto"
    )
    return Part(spec, {})


def build_profiles(hosts: Hosts, start: Strategy, now: float | None = None) -> list[Any]:
    """The engine's profiles of `--strategy auto` without lists (see :func:`scope_profiles`)."""
    return scope_profiles(default_part(start), hosts, now)


def scope_profiles(part: Any, hosts: Hosts, now: float | None = None) -> list[Any]:
    """The engine's profiles of one auto profile (a targeting.Part) and the hosts
    learned for it: one watching profile per strategy in use (exact names, the
    profile's other filters), unfixable hosts with the configured split and no
    watch, and the profile itself, watching, with the configured split.

    A learned name the profile's lists no longer take (a list changed) is left to
    the profile itself: what was learned applies only where the profile does."""
    from govpass._core import HostList

    now = time.time() if now is None else now
    spec = part.spec
    prefix = prefix_of(spec.state_key)
    start = Strategy(spec.split_chunk, tuple(spec.split_pos))
    filters = dict(part.filters)
    include = [h for h in filters.get("hosts", []) if len(h)]
    exclude = list(filters.get("hosts_exclude", []))
    by_label: dict[str, list[str]] = {}
    unfixable: list[str] = []
    for host, (label, _plain, until) in hosts.items():
        if (include and not any(host in h for h in include)) or any(host in h for h in exclude):
            continue
        if until is not None and until > now:
            unfixable.append(host)
        elif until is None and label != start.label:
            by_label.setdefault(label, []).append(host)
    # The learned names' profiles: the profile's filters but the names themselves
    rest = {k: v for k, v in filters.items() if k not in ("hosts", "hosts_exclude")}
    profiles = []
    if unfixable:
        lists = {**rest, "hosts": [HostList(_exact(unfixable))]}
        profiles.append(_profile(prefix + UNFIXABLE_LABEL, start, lists, watch=False))
    for label, names in sorted(by_label.items()):
        lists = {**rest, "hosts": [HostList(_exact(names))]}
        step = None if label == NONE_LABEL else Strategy.from_text(label)
        profiles.append(_profile(prefix + label, step, lists, watch=True))
    profiles.append(_profile(prefix + NEW_LABEL, start, filters, watch=True))
    return profiles


def _exact(names: list[str]) -> list[str]:
    return ["^" + n for n in sorted(names)]


def _profile(name: str, s: Strategy | None, filters: dict[str, Any], watch: bool) -> Any:
    from govpass._core import Profile

    if s is None:
        return Profile(name, action="pass", watch=watch, **filters)
    return Profile(
        name, split_chunk=s.chunk, split_positions=list(s.positions), watch=watch, **filters
    )


class ProfileMixer:
    """A worker's engine profiles: the configured ones (`parts`, new with each list
    reload) with each auto profile expanded by what was learned for it (new with
    each state reload). Both are handed in on the packet loop's thread."""

    def __init__(self, parts: list[Any], apply: Callable[[list[Any]], None]) -> None:
        self.parts = parts
        self.scopes: dict[str, Hosts] = {}
        self.apply = apply

    def lists(self, parts: list[Any]) -> None:
        self.parts = parts
        self.apply(self.profiles())

    def learned(self, scopes: dict[str, Hosts]) -> None:
        self.scopes = scopes
        self.apply(self.profiles())

    def profiles(self) -> list[Any]:
        from govpass.targeting import engine_profiles

        return engine_profiles(self.parts, self.scopes)


class StrategyFeed:
    """A worker's reloads of the state file, on a thread of their own: the packet
    loop's timer only hands over what is ready (:meth:`take`): the learned hosts of
    every scope (see :func:`parse_scopes`)."""

    def __init__(
        self, path: Path, apply: Callable[[dict[str, Hosts]], None], every: float = 0.2
    ) -> None:
        self.path = path
        self.apply = apply
        self.every = every
        self.reloads = 0
        self.failures = 0
        self._sig: tuple[int, int, int] | None = None
        self._ready: dict[str, Hosts] | None = None
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
            scopes = {} if data is None else parse_scopes(data)
        except Exception:  # whatever the file holds, the thread lives on: the profiles stay
            self.failures += 1
            return
        with self._lock:
            self._ready = scopes

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
    """The learners of one `govpass run` and their state file: loaded at the start,
    written on every change, re-read when changed from outside (`govpass strategy
    clear` removes it: everything is learned afresh)."""

    def __init__(
        self,
        path: Path,
        starts: dict[str, Strategy],
        ladder: Sequence[Strategy],
        unfixable_time: float,
        log: Callable[[str], None],
    ) -> None:
        from govpass.safefile import make_directory

        self.path = path
        self.log = log
        make_directory(path.parent, "strategy-state directory")
        self.book = StrategyBook(starts, ladder, unfixable_time, log)
        load_learner(path, self.book, log)
        self.book.expire()
        self._sig: tuple[int, int, int] | None = None
        self._error = False
        self.save()
        log(f"strategy auto: steps {self.book.describe()}; state in {path}")

    def save(self) -> None:
        """Writes the state file (workers reload it); a failure is logged once."""
        try:
            self.book.save(self.path)
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
            changed |= self.book.observe(profile, host, failed)
        if changed:
            self.save()
        return changed

    def tick(self) -> bool:
        """Ends unfixable periods and takes in a file changed from outside; True when
        the strategies changed."""
        changed = self.book.expire()
        if _signature(self.path) != self._sig:
            self.book.clear()
            load_learner(self.path, self.book, self.log)
            changed = True
        if changed:
            self.save()
        return changed

    def scopes(self) -> dict[str, Hosts]:
        """What is known now, as a worker reads it from the file (a single-process
        backend hands it to its ProfileMixer directly)."""
        return parse_scopes(self.book.to_json())

    def stats(self) -> dict[str, Any]:
        return {**self.book.stats(), "counts": self.book.counts()}


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
