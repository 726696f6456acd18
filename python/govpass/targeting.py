"""Targeting: which flows are split, as ordered profiles (first match wins).

A profile has filters (host lists, IP sets, ports, IP family, interfaces) and
an action: ``split`` with its own strategy, or ``pass``. Matching itself is
the engine's (``govpass._core.Profile``); this module turns configuration into
profiles and keeps them current:

* :func:`specs_from_config` reads ``[[profile]]`` tables, or builds
  ``[listed: split, other: pass]`` from the list shortcuts (``--hostlist``,
  ``--hosts``, ``--ipset``, ``--hostlist-auto`` ...), or returns nothing (the
  engine's own catch-all split: today's behaviour). No file is read here.
* :class:`Targeting` reads the list files (plain or gzip) and builds the
  engine profiles; a cache keyed by (mtime, size, inode) re-parses only files
  that changed.
* :class:`ListWatcher` polls the files about once a second (and on request,
  i.e. SIGHUP) and hands new profiles to the engine; a broken file keeps the
  previous profiles and is reported in one line.

List files: one entry per line; blank lines and ``#`` comments are ignored.
Host lists match subdomains unless an entry starts with ``^``. IP sets hold
IPv4/IPv6 addresses and CIDR prefixes.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from govpass._core import HostList, IpSet, Profile
from govpass.errors import ConfigError
from govpass.quoting import LIMIT, escape_text, kind_of, quote
from govpass.reading import check_path, read_bounded, shown
from govpass.settings import BY_NAME

if TYPE_CHECKING:
    from govpass.config import Config

# Settings that, when any is given, turn on the [listed, other] shortcut profiles.
SHORTCUTS = (
    "hostlist",
    "hosts",
    "hostlist-exclude",
    "hosts-exclude",
    "ipset",
    "ips",
    "ipset-exclude",
    "ips-exclude",
    "hostlist-auto",
)
PROFILE_KEYS = (
    "name",
    "action",
    "split-chunk",
    "split-pos",
    "hostlist",
    "hosts",
    "hostlist-exclude",
    "hosts-exclude",
    "ipset",
    "ips",
    "ipset-exclude",
    "ips-exclude",
    "ports",
    "family",
    "iface",
    "auto",
    "strategy",
)
FILE_KEYS = ("hostlist", "hostlist-exclude", "ipset", "ipset-exclude")
HOST_KINDS = ("hostlist", "hostlist-exclude", "hosts", "hosts-exclude", "hostlist-auto")
FAMILIES = {"any": None, "ipv4": "ipv4", "ipv6": "ipv6"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # whole name: fullmatch
MAX_LIST_BYTES = 64 * 1024 * 1024  # the max-list-bytes setting's default
_ENGINE_LINE = re.compile(r"at line (\d+): (.*)$")


def valid_name(name: str) -> bool:
    """A profile name: letters, digits, '.', '_', '-' (no ':', which the names of
    learned strategies' profiles use), at most 64."""
    return _NAME.fullmatch(name) is not None


FileSig = tuple[int, int, int] | None
"""(mtime in ns, size, inode) of a list file; None when it cannot be stat'ed."""


@dataclass(frozen=True)
class ProfileSpec:
    """One profile as configured (paths resolved, values checked, nothing read)."""

    name: str
    action: str = "split"
    split_chunk: int = 5
    split_pos: tuple[str, ...] = ()
    hostlist: tuple[Path, ...] = ()
    hosts: tuple[str, ...] = ()
    hostlist_exclude: tuple[Path, ...] = ()
    hosts_exclude: tuple[str, ...] = ()
    ipset: tuple[Path, ...] = ()
    ips: tuple[str, ...] = ()
    ipset_exclude: tuple[Path, ...] = ()
    ips_exclude: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    family: str | None = None
    iface: tuple[str, ...] = ()
    auto: Path | None = None
    strategy: str = "fixed"  # auto: strategies learned per host name (strategy_learner)
    # Where its learned hosts are in the state file: "" for the top-level "hosts" that
    # `--strategy auto` (with or without --hostlist) has always used, else the profile's
    # name under "profiles".
    state_key: str = ""

    @property
    def learns(self) -> bool:
        return self.strategy == "auto"

    def files(self) -> list[tuple[str, Path]]:
        """(kind, path) of every list file this profile reads, the auto list included."""
        out = [(key, path) for key in FILE_KEYS for path in getattr(self, key.replace("-", "_"))]
        if self.auto is not None:
            out.append(("hostlist-auto", self.auto))
        return out


# ------------------------------------------------------------------ configuration


def _strings(value: Any, what: str) -> tuple[str, ...]:
    """A comma-separated string or an array of strings, as a tuple of non-empty items."""
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise ConfigError(
            f"{what}: {kind_of(value)} {quote(value)} (accepted: a string or an array of strings)",
            field=what.rsplit(": ", 1)[-1],
        )
    return tuple(s.strip() for s in items if s.strip())


def _paths(values: Sequence[str], base: Path, what: str) -> tuple[Path, ...]:
    out = []
    for v in values:
        check_path(v, what, what.rsplit(" ", 1)[-1])
        try:
            p = Path(v).expanduser()
        except RuntimeError:  # ~user for a user that does not exist
            user = v[1:].split("/", 1)[0]
            raise ConfigError(
                f"{what} {shown(v)}: no user named {quote(user)} for '~{escape_text(user)}' "
                "(accepted: a path; ~ or ~user for a home directory)",
                field=what.rsplit(" ", 1)[-1],
            ) from None
        out.append(p if p.is_absolute() else base / p)
    return tuple(out)


def _base_of(config: Config, name: str) -> Path:
    """Directory relative paths of setting `name` are resolved against: the config
    file's when the value came from it, else the working directory."""
    origin = config.sources.get(name, "")
    if origin.startswith("file "):
        return Path(origin[5:]).absolute().parent
    return Path.cwd()


def _check_strategy(where: str, action: str, chunk: int, pos: Sequence[str]) -> None:
    """The engine's own validation of a split strategy (messages name the field)."""
    try:
        Profile("check", action=action, split_chunk=chunk, split_positions=list(pos))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}", field=e.field) from None


def _ports(value: Any, where: str, allowed: Sequence[int]) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, list | tuple):
        value = [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    out = []
    for p in _strings(value, f"{where}: ports"):
        if not p.isdigit() or not 1 <= int(p) <= 65535:
            raise ConfigError(f"{where}: invalid port {p!r} (accepted: 1..=65535)", field="ports")
        if int(p) not in allowed:
            ports = ",".join(str(a) for a in allowed)
            raise ConfigError(
                f"{where}: port {p} is not captured (ports = {ports}); add it to ports",
                field="ports",
            )
        out.append(int(p))
    return tuple(out)


def _spec_from_table(
    table: Mapping[str, Any], number: int, base: Path, config: Config
) -> ProfileSpec:
    name = table.get("name", f"profile-{number}")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"[[profile]] #{number}: invalid name {quote(name)} "
            "(accepted: letters, digits, '.', '_', '-', at most 64)",
            field="name",
        )
    where = f"[[profile]] {name!r}"
    unknown = sorted(set(table) - set(PROFILE_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {quote(unknown[0])} (accepted: {', '.join(PROFILE_KEYS)})",
            field=unknown[0],
        )
    action = table.get("action", "split")
    if not isinstance(action, str) or action not in ("split", "pass"):
        raise ConfigError(
            f"{where}: invalid action {quote(action)} (accepted: split, pass)", "action"
        )
    if action == "pass" and ("split-chunk" in table or "split-pos" in table):
        raise ConfigError(f"{where}: split-chunk/split-pos need action = split", "action")
    try:
        chunk = BY_NAME["split-chunk"].parse(table.get("split-chunk", config.split_chunk))
        pos = BY_NAME["split-pos"].parse(table.get("split-pos", list(config.split_pos)))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}", field=e.field) from None
    _check_strategy(where, action, chunk, pos)
    lists: dict[str, Any] = {}
    for key in ("hostlist", "hostlist-exclude", "ipset", "ipset-exclude"):
        if key in table:
            what = f"{where}: {key}"
            lists[key.replace("-", "_")] = _paths(_strings(table[key], what), base, what)
    for key in ("hosts", "hosts-exclude", "ips", "ips-exclude"):
        if key in table:
            lists[key.replace("-", "_")] = _strings(table[key], f"{where}: {key}")
    family = table.get("family", "any")
    if not isinstance(family, str) or family not in FAMILIES:
        raise ConfigError(
            f"{where}: invalid family {quote(family)} (accepted: any, ipv4, ipv6)", field="family"
        )
    auto = None
    if "auto" in table:
        if not isinstance(table["auto"], str) or not table["auto"].strip():
            raise ConfigError(
                f"{where}: invalid auto {quote(table['auto'])} "
                "(accepted: the path of the auto host list)",
                "auto",
            )
        if action != "split":
            raise ConfigError(f"{where}: auto needs action = split", field="auto")
        auto = _paths([table["auto"].strip()], base, f"{where}: auto")[0]
    strategy = _profile_strategy(table, where, action, config)
    return ProfileSpec(
        name=name,
        action=action,
        split_chunk=chunk,
        split_pos=pos,
        ports=_ports(table.get("ports", []), where, config.port_numbers),
        family=FAMILIES[family],
        iface=_strings(table.get("iface", []), f"{where}: iface"),
        auto=auto,
        strategy=strategy,
        state_key=name if strategy == "auto" else "",
        **lists,
    )


def _profile_strategy(table: Mapping[str, Any], where: str, action: str, config: Config) -> str:
    """A profile's strategy: its own, else the global one (for split profiles: a pass
    profile splits nothing, so it learns nothing)."""
    if "strategy" not in table:
        strategy = config.strategy if action == "split" else "fixed"
        origin = "the global strategy setting"
    else:
        try:
            strategy = BY_NAME["strategy"].parse(table["strategy"], f"{where}: strategy")
        except ConfigError as e:
            raise ConfigError(str(e), field="strategy") from None
        origin = "its strategy key"
        if strategy == "auto" and action != "split":
            raise ConfigError(
                f"{where}: strategy = auto needs action = split (accepted: strategy = "
                "fixed with action = pass)",
                field="strategy",
            )
    if strategy == "auto" and "auto" in table:
        raise ConfigError(
            f"{where}: auto (an auto host list) cannot be combined with strategy = auto "
            f"(from {origin}) (accepted: one of them per profile; strategy = fixed "
            "with auto)",
            field="strategy",
        )
    return str(strategy)


def _shortcut_specs(config: Config) -> tuple[ProfileSpec, ...]:
    lists: dict[str, Any] = {}
    for key in ("hostlist", "hostlist-exclude", "ipset", "ipset-exclude"):
        attr = key.replace("-", "_")
        lists[attr] = _paths(getattr(config, attr), _base_of(config, key), key)
    for key in ("hosts", "hosts-exclude", "ips", "ips-exclude"):
        attr = key.replace("-", "_")
        lists[attr] = tuple(getattr(config, attr))
    auto = None
    if config.hostlist_auto.strip():
        auto = _paths(
            [config.hostlist_auto.strip()], _base_of(config, "hostlist-auto"), "hostlist-auto"
        )[0]
    if auto is not None and config.strategy == "auto":
        raise ConfigError(
            "strategy auto cannot be combined with hostlist-auto (accepted: one of them; "
            "strategy fixed with hostlist-auto)",
            field="strategy",
        )
    listed = ProfileSpec(
        name="listed",
        action="split",
        split_chunk=config.split_chunk,
        split_pos=tuple(config.split_pos),
        auto=auto,
        strategy=config.strategy,
        **lists,
    )
    return (listed, ProfileSpec(name="other", action="pass"))


def specs_from_config(config: Config) -> tuple[ProfileSpec, ...]:
    """The configured profiles, in order; empty means the engine's default
    (one catch-all profile splitting with the global strategy)."""
    given = [name for name in SHORTCUTS if getattr(config, name.replace("-", "_"))]
    if config.profiles:
        if given:
            origin = config.sources.get(given[0], "flag")
            raise ConfigError(
                f"{given[0]} ({origin}) cannot be combined with [[profile]] tables "
                f"({config.sources.get('profile', 'config file')}); put it into a profile",
                field=given[0],
            )
        base = _base_of(config, "profile")
        specs = tuple(
            _spec_from_table(t, n, base, config) for n, t in enumerate(config.profiles, 1)
        )
        seen: set[str] = set()
        for spec in specs:
            if spec.name in seen:
                raise ConfigError(
                    f"[[profile]] name {spec.name!r} is used twice (accepted: one name each)",
                    field="name",
                )
            seen.add(spec.name)
        return specs
    if given:
        return _shortcut_specs(config)
    return ()


def uses_auto(config: Config) -> bool:
    """Whether some profile learns names (the rules must then queue a few replies)."""
    return any(spec.auto is not None for spec in specs_from_config(config))


def learns_strategies(config: Config) -> bool:
    """Whether strategies are learned: `strategy = auto` without lists (every host),
    for the listed names, or in some [[profile]]."""
    specs = specs_from_config(config)
    if not specs:
        return config.strategy == "auto"
    return any(spec.learns for spec in specs)


# ------------------------------------------------------------------ list files


def file_sig(path: Path) -> FileSig:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def read_list(
    path: Path, kind: str, missing_ok: bool = False, limit: int = MAX_LIST_BYTES
) -> bytes:
    """The bytes of a list file (gzip recognised by its magic bytes, and
    decompressed): a regular file of at most `limit` bytes, also once
    decompressed (the max-list-bytes setting)."""
    return read_bounded(path, kind, kind, limit, "max-list-bytes", missing_ok, gunzip=True)


def read_lines(
    path: Path, kind: str, missing_ok: bool = False, limit: int = MAX_LIST_BYTES
) -> list[str]:
    """The lines of a list file as text, for the code that rewrites one (the
    auto list); loading a list goes from the bytes (:func:`parse_list`)."""
    data = read_list(path, kind, missing_ok, limit)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        parse_list(kind, data, f"{kind} {shown(path)}")  # says which line is not UTF-8
        raise
    # split("\n") rather than splitlines(): line numbers must be the editor's.
    return text.removeprefix("\ufeff").split("\n")


def parse_list(
    kind: str,
    data: bytes | list[str],
    where: str,
    unit: str = "line",
    skip_invalid: bool = False,
) -> Any:
    """A HostList or IpSet from a file's bytes or from entries; a bad entry (or
    data that is not UTF-8 text) raises one line naming `where`. With
    `skip_invalid` (host lists from bytes only) bad entries are left out and
    counted in the list's ``skipped``."""
    hosts = kind in HOST_KINDS
    try:
        if isinstance(data, bytes):
            # Split, checked and built in Rust without the GIL (list threads).
            if hosts:
                return HostList.from_bytes(data, skip_invalid=skip_invalid)
            return IpSet.from_bytes(data)
        return HostList(data) if hosts else IpSet(data)
    except ConfigError as e:
        m = _ENGINE_LINE.search(str(e))
        if m and m[2] == _NOT_UTF8:
            raise ConfigError(
                f"{where} {unit} {m[1]}: {_NOT_UTF8} (accepted: UTF-8 text)", field=kind
            ) from None
        detail = f" {unit} {m[1]}: {_cut_entry(m[2])}" if m else f": {escape_text(str(e), 300)}"
        accepted = _HOSTS_ACCEPTED if hosts else _IPS_ACCEPTED
        raise ConfigError(f"{where}{detail} (accepted: {accepted})", field=kind) from None


_NOT_UTF8 = "not UTF-8 text"  # the engine's words for it
_HOSTS_ACCEPTED = "host names, ^name for the name alone, # comments"
_IPS_ACCEPTED = "IPv4 and IPv6 addresses and CIDR prefixes, # comments"


def _cut_entry(detail: str) -> str:
    """The engine's `"entry" is not a valid entry` with a long entry cut short (the
    engine has escaped it already)."""
    tail = " is not a valid entry"
    entry = detail.removesuffix(tail)
    if len(entry) <= LIMIT + 2:
        return detail
    return f'{entry[: LIMIT + 1]}"... ({len(entry) - 2} characters){tail}'


class ListCache:
    """Parsed list files by (kind, path), re-read only when their signature changes."""

    def __init__(self, limit: int = MAX_LIST_BYTES) -> None:
        self.limit = limit
        self._items: dict[tuple[str, Path], tuple[FileSig, Any]] = {}
        self.notes: list[str] = []  # auto list lines skipped by loads since the last take

    def load(self, kind: str, path: Path, sig: FileSig, missing_ok: bool = False) -> Any:
        hit = self._items.get((kind, path))
        if hit is not None and sig is not None and hit[0] == sig:
            return hit[1]
        data = read_list(path, kind, missing_ok, self.limit)
        if kind == "hostlist-auto":  # govpass's own file: a bad line is skipped, not fatal
            from govpass.autolearn import parse_auto_list

            parsed, note = parse_auto_list(data, f"{kind} {shown(path)}")
            if note:
                self.notes.append(note)
        else:
            parsed = parse_list(kind, data, f"{kind} {shown(path)}")
        self._items[(kind, path)] = (sig, parsed)
        return parsed

    def clear(self) -> None:
        self._items.clear()


# ------------------------------------------------------------------ profiles


class Targeting:
    """Builds engine profiles from specs, reading list files through a cache."""

    def __init__(
        self,
        specs: Sequence[ProfileSpec],
        ifindex: Callable[[str], int] = socket.if_nametoindex,
        max_list_bytes: int = MAX_LIST_BYTES,
    ) -> None:
        self.specs = tuple(specs)
        self.ifindex = ifindex
        self.cache = ListCache(max_list_bytes)
        self.built_sigs: dict[Path, FileSig] = {}
        self.summary = ""
        # Inline lists never change: parsed (and checked) once.
        self._inline: dict[tuple[str, str], Any] = {}
        for spec in self.specs:
            for key in ("hosts", "hosts-exclude", "ips", "ips-exclude"):
                items = getattr(spec, key.replace("-", "_"))
                if items:
                    where = f"{key} of profile {spec.name!r}"
                    self._inline[(spec.name, key)] = parse_list(key, list(items), where, "entry")

    @classmethod
    def from_config(cls, config: Config, **kw: Any) -> Targeting:
        kw.setdefault("max_list_bytes", config.max_list_bytes)
        return cls(specs_from_config(config), **kw)

    @property
    def active(self) -> bool:
        return bool(self.specs)

    @property
    def auto(self) -> bool:
        return any(spec.auto is not None for spec in self.specs)

    def files(self) -> list[Path]:
        seen: dict[Path, None] = {}
        for spec in self.specs:
            for _, path in spec.files():
                seen.setdefault(path, None)
        return list(seen)

    def auto_files(self) -> dict[str, Path]:
        """Profile name -> its auto host list file."""
        return {s.name: s.auto for s in self.specs if s.auto is not None}

    def signatures(self) -> dict[Path, FileSig]:
        return {path: file_sig(path) for path in self.files()}

    @property
    def learns(self) -> bool:
        return any(spec.learns for spec in self.specs)

    def build(self, force: bool = False) -> list[Profile]:
        """Engine profiles from the files as they are now (`force`: re-read all of
        them and resolve interface names again). Raises ConfigError, naming the
        file and line, on anything unreadable or invalid."""
        return engine_profiles(self.build_parts(force))

    def build_parts(self, force: bool = False) -> list[Part]:
        """What :meth:`build` makes profiles of: each spec with its lists read (an auto
        strategy profile becomes several engine profiles: govpass.strategy_learner)."""
        if force:
            self.cache.clear()
        sigs = self.signatures()
        parts: list[Part] = []
        notes = []
        for spec in self.specs:
            sets: dict[str, list[Any]] = {}
            for key in ("hosts", "hosts-exclude", "ips", "ips-exclude"):
                inline = self._inline.get((spec.name, key))
                sets[key] = [inline] if inline is not None else []
            file_key = {
                "hostlist": "hosts",
                "hostlist-exclude": "hosts-exclude",
                "ipset": "ips",
                "ipset-exclude": "ips-exclude",
                "hostlist-auto": "hosts",
            }
            for kind, path in spec.files():
                parsed = self.cache.load(kind, path, sigs[path], missing_ok=kind == "hostlist-auto")
                sets[file_key[kind]].append(parsed)
            ifaces = []
            for name in spec.iface:
                try:
                    ifaces.append(self.ifindex(name))
                except OSError:
                    raise ConfigError(
                        f"profile {spec.name!r}: no network interface named {name!r}",
                        field="iface",
                    ) from None
            filters = {
                "hosts": sets["hosts"],
                "hosts_exclude": sets["hosts-exclude"],
                "ips": sets["ips"],
                "ips_exclude": sets["ips-exclude"],
                "ports": list(spec.ports),
                "family": spec.family,
                "ifaces": ifaces,
            }
            parts.append(Part(spec, filters))
            notes.append(_describe(spec, sets))
        self.built_sigs = sigs
        self.summary = "; ".join(notes + self.cache.notes)  # skipped lines: once per version
        self.cache.notes.clear()
        return parts


@dataclass(frozen=True)
class Part:
    """One configured profile with its lists read: the engine Profile's filter
    arguments (hosts, hosts_exclude, ips, ips_exclude, ports, family, ifaces)."""

    spec: ProfileSpec
    filters: Mapping[str, Any]

    def profile(self, **changes: Any) -> Profile:
        """The engine profile of the spec as configured, `changes` applied."""
        spec = self.spec
        kw: dict[str, Any] = {
            "action": spec.action,
            "split_chunk": spec.split_chunk,
            "split_positions": list(spec.split_pos),
            "auto": spec.auto is not None,
            **self.filters,
        }
        kw.update(changes)
        return Profile(kw.pop("name", spec.name), **kw)


def engine_profiles(
    parts: Sequence[Part], learned: Mapping[str, Any] | None = None
) -> list[Profile]:
    """The engine's profiles, in order; an auto strategy profile is expanded by what
    was learned for it (`learned`: state-file key -> hosts, see strategy_learner)."""
    out: list[Profile] = []
    for part in parts:
        if part.spec.learns:
            from govpass.strategy_learner import scope_profiles

            out += scope_profiles(part, (learned or {}).get(part.spec.state_key, {}))
        else:
            out.append(part.profile())
    return out


def _describe(spec: ProfileSpec, sets: Mapping[str, list[Any]]) -> str:
    parts = [f"{spec.name}: {spec.action}"]
    for key, label in (
        ("hosts", "hosts"),
        ("hosts-exclude", "excluded hosts"),
        ("ips", "ip ranges"),
        ("ips-exclude", "excluded ip ranges"),
    ):
        if sets[key]:
            parts.append(f"{sum(len(s) for s in sets[key])} {label}")
    if spec.auto is not None:
        parts.append(f"auto {spec.auto}")
    if spec.learns:
        parts.append("strategy auto")
    return " ".join(parts[:1]) + (" (" + ", ".join(parts[1:]) + ")" if parts[1:] else "")


class ListWatcher:
    """Keeps the engine's profiles in step with the list files.

    ``poll()`` is cheap and meant for a worker's timer: at most every
    ``interval`` seconds it compares the files' (mtime, size, inode) with those
    of the last build; ``request()`` (safe from a signal handler) makes the next
    poll re-read everything. A failed build keeps the engine's current profiles
    and logs one line; it is retried when the files change again, and the same
    failure is not logged again until a build succeeded or a reload was requested.
    """

    def __init__(
        self,
        targeting: Targeting,
        apply: Callable[[list[Any]], None],
        log: Callable[[str], None] | None = None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        parts: bool = False,
    ) -> None:
        self.targeting = targeting
        # `parts`: apply gets Targeting.build_parts()'s parts, not profiles (a worker
        # with auto strategies merges them with the learned ones on its loop's thread)
        self.apply: Callable[[list[Any]], None] = apply
        self._build = targeting.build_parts if parts else targeting.build
        self.log = log
        self.interval = interval
        self.clock = clock
        self.seen = dict(targeting.built_sigs)
        self.reloads = 0
        self.failures = 0
        self._next = clock() + interval
        self._requested = False
        self._failure = ""  # the message of the failure last logged

    def request(self) -> None:
        self._requested = True

    def poll(self, now: float | None = None) -> bool:
        """Reloads if due and something changed; True when new profiles were applied."""
        now = self.clock() if now is None else now
        forced = self._requested
        if not forced and now < self._next:
            return False
        self._requested = False
        self._next = now + self.interval
        sigs = self.targeting.signatures()
        if not forced and sigs == self.seen:
            return False
        self.seen = sigs
        try:
            profiles: list[Any] = self._build(forced)
        except ConfigError as e:
            self.failures += 1
            if forced or str(e) != self._failure:
                self._log(f"{e}; keeping the previous list")
            self._failure = str(e)
            return False
        self._failure = ""
        self.apply(profiles)
        self.seen = dict(self.targeting.built_sigs)
        self.reloads += 1
        why = "SIGHUP" if forced else "changed"
        self._log(f"lists reloaded ({why}): {self.targeting.summary}")
        return True

    def _log(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)
