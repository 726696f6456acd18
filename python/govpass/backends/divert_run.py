"""`govpass run --backend divert`: one divert worker, status, clean shutdown.

There is nothing to install or remove around it: the capture lives and dies
with the handle (WinDivert's driver state, or libebpfdivert's TC programs).
On Linux a process killed with SIGKILL leaves its TC programs attached. For
up to 3 s they still divert into a ring nobody reads (new connections stall
until a retransmission), then pass everything (libebpfdivert's owner
heartbeat). At start we detach such leftovers: libebpfdivert's registry
reaper, plus a sweep for the ones it cannot see (see :func:`sweep_orphans`).

One worker only: WinDivert cannot spread a filter's flows over several
handles by flow hash, and one flow must always meet one engine.

SIGINT/SIGTERM stop it; SIGHUP re-reads the host lists (when profiles are
configured). Stats go where the NFQUEUE daemon puts them (``GOVPASS_RUN_DIR``:
``daemon.json`` + ``worker-0.json``), so ``govpass stats`` reads them alike.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext, suppress
from pathlib import Path
from typing import Any

from govpass.backends import divert
from govpass.config import Config
from govpass.errors import BackendError, ConfigError
from govpass.stop_signals import stop_on_signals
from govpass.strategy_learner import StrategyKeeper

TC_PROGRAM_PREFIX = "tc_divert_"  # libebpfdivert's cls_bpf programs


def live_bpf_prog_ids(proc: Path = Path("/proc")) -> set[int] | None:
    """Ids of the BPF programs some process still holds a descriptor to; None when
    some process's descriptors could not be read (then nothing can be called orphaned)."""
    ids: set[int] = set()
    for fdinfo in proc.glob("[0-9]*/fdinfo/*"):
        try:
            text = fdinfo.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            continue  # the descriptor or the process went away meanwhile
        except OSError:
            return None  # e.g. EACCES without CAP_SYS_PTRACE: unknown owners
        for row in text.splitlines():
            if row.startswith("prog_id:"):
                with suppress(ValueError):
                    ids.add(int(row.split()[1]))
    return ids


def orphaned_filters(
    filters: dict[tuple[str, str], list[dict[str, Any]]], live: set[int]
) -> list[tuple[str, str, int, str]]:
    """From `tc -j filter show` output per (interface, hook): the libebpfdivert
    filters whose program no process holds, as (interface, hook, pref, handle)."""
    out = []
    for (ifname, hook), entries in sorted(filters.items()):
        for entry in entries:
            options = entry.get("options") or {}
            prog = options.get("prog") or {}
            if entry.get("kind") != "bpf" or "handle" not in options:
                continue
            if not str(prog.get("name", "")).startswith(TC_PROGRAM_PREFIX):
                continue
            if prog.get("id") in live:
                continue
            out.append((ifname, hook, int(entry["pref"]), str(options["handle"])))
    return out


def sweep_orphans(run: Callable[..., Any] = subprocess.run) -> list[str]:
    """Linux: detach the TC programs of divert handles whose process died.

    libebpfdivert's own reaper (``EBPFDivert.unregister()``, also run on every
    open) only knows handles recorded in its registry pinned under
    /sys/fs/bpf, which is missing where bpffs is not mounted (e.g. under
    ``ip netns exec``, which mounts a fresh /sys). A libebpfdivert program that
    no process holds any more can only be such a leftover. They already pass
    everything (their owner's heartbeat is gone), but still run per packet.
    Nothing is removed unless every process's descriptors could be read (a
    process in another PID namespace sharing this network namespace stays
    invisible, though: run one divert program per namespace).
    """
    if shutil.which("tc") is None:
        return []
    filters: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _, ifname in socket.if_nameindex():
        for hook in ("ingress", "egress"):
            res = run(
                ["tc", "-j", "filter", "show", "dev", ifname, hook],
                capture_output=True,
                text=True,
                check=False,
            )
            with suppress(ValueError):
                filters[(ifname, hook)] = json.loads(res.stdout or "[]")
    live = live_bpf_prog_ids()
    if live is None:
        return []
    removed = []
    for ifname, hook, pref, handle in orphaned_filters(filters, live):
        argv = ["tc", "filter", "del", "dev", ifname, hook, "protocol", "all"]
        argv += ["pref", str(pref), "handle", handle, "bpf"]
        if run(argv, capture_output=True, text=True, check=False).returncode == 0:
            removed.append(f"{ifname} {hook} pref {pref} handle {handle}")
    return removed


def _clean_leftovers(log: Callable[[str], None]) -> None:
    """Linux: remove what divert handles of crashed runs left attached."""
    if not sys.platform.startswith("linux"):
        return
    try:
        from pydivert import EBPFDivert

        EBPFDivert.unregister()
        removed = sweep_orphans()
    except Exception as e:  # best effort: a failure here must not stop the run
        log(f"could not clean leftover divert programs: {type(e).__name__}: {e}")
        return
    if removed:
        log(
            f"removed {len(removed)} divert program(s) left by a dead process: {'; '.join(removed)}"
        )


DIVERT_KEYS = ("divert_diverted", "divert_queue_full", "divert_ringbuf_full", "divert_too_big")


def status_line(stats: dict[str, Any]) -> str:
    """The NFQUEUE daemon's status line plus the divert handle's own counters:
    packets the kernel diverted (before the exact filter), queue drops, ring-full
    passes (libebpfdivert lets packets through when its ring is full), too big."""
    from govpass.cli.status import line

    extra = [f"{k}={int(stats[k])}" for k in DIVERT_KEYS if k in stats]
    return " ".join([line(stats), *extra])


class LocalStrategies:
    """--strategy auto in the one divert process: the engine's verdicts go straight
    to the keeper, and what it learned straight back to the engine's profiles (the
    NFQUEUE daemon passes both through a pipe and the state file instead)."""

    def __init__(self, keeper: StrategyKeeper, worker: divert.DivertWorker, start: Any) -> None:
        from govpass.strategy_learner import ProfileMixer, default_part

        self.keeper = keeper
        self.worker = worker
        self._checked = time.monotonic()
        self.mixer = ProfileMixer([default_part(start)], self._set)
        self.mixer.learned(keeper.scopes())

    def _set(self, profiles: list[Any]) -> None:
        with self.worker.lock:
            self.worker.engine.set_profiles(profiles)

    def tick(self) -> None:
        with self.worker.lock:
            events = self.worker.engine.take_events()
        changed = self.keeper.observe(events)
        now = time.monotonic()
        if now >= self._checked + 1.0:  # expiries and outside changes: once a second
            self._checked = now
            changed |= self.keeper.tick()
        if changed:
            self.mixer.learned(self.keeper.scopes())


def _write_stats(
    directory: Path, worker: divert.DivertWorker, strategies: LocalStrategies | None = None
) -> dict[str, Any]:
    from govpass.daemon import STRATEGY_STATS, write_json_atomic

    stats = worker.stats()
    with suppress(OSError):
        write_json_atomic(
            directory / "worker-0.json", {"backend": "divert", "filter": worker.filter, **stats}
        )
        if strategies is not None:
            write_json_atomic(directory / STRATEGY_STATS, strategies.keeper.stats())
    return stats


def _strategies(
    config: Config, worker: divert.DivertWorker, log: Callable[[str], None]
) -> LocalStrategies | None:
    """The learner of `--strategy auto` without lists; None otherwise (auto profiles
    of host lists keep their configured split here: only nfqueue learns per profile)."""
    if not divert.learns_here(config):
        return None
    from govpass.daemon import config_start
    from govpass.strategy import ladder
    from govpass.strategy_learner import DEFAULT_SCOPE

    start = config_start(config)
    keeper = StrategyKeeper(
        Path(config.strategy_state),
        {DEFAULT_SCOPE: start},
        ladder(config.strategy_ladder),
        config.strategy_unfixable_time,
        log,
    )
    return LocalStrategies(keeper, worker, start)


def run_divert(
    config: Config,
    log: Callable[[str], None],
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """The divert daemon: runs until SIGINT/SIGTERM or `should_stop()` (a Windows
    service's stop request), then releases every held packet and closes."""
    from govpass.daemon import run_dir
    from govpass.run_lock import claim_run_lock, release_run_lock

    if config.block_quic == "listed":
        raise ConfigError(
            "invalid block-quic: 'listed' needs the nfqueue backend "
            "(the divert backend captures TCP only)",
            field="block-quic",
        )
    if sys.platform.startswith("freebsd"):
        from govpass.backends import freebsd

        if config.strategy == "auto":
            raise ConfigError(
                "strategy auto: not supported by the FreeBSD divert backend yet (its ipfw "
                "rules divert no replies, which the verdicts need; accepted there: "
                "strategy fixed)",
                field="strategy",
            )

        stop = should_stop or (lambda: False)
        freebsd.run_freebsd(config, freebsd.options_from(config), log, should_stop=stop)
        return
    if not (sys.platform.startswith("linux") or sys.platform == "win32"):
        raise BackendError(
            f"backend divert runs on Windows, Linux and FreeBSD only, not {sys.platform}"
        )
    reason = divert.unavailable_reason()
    if reason:
        raise BackendError(f"divert backend unusable: {reason}")
    divert.check_privileges()
    if config.workers > 1:
        log(f"workers={config.workers} ignored: the divert backend runs one worker")
    worker = divert.DivertWorker(config)  # validates filter, queue settings and lists
    profiles = worker.watch_lists(log)
    if profiles is not None:
        log(f"profiles: {profiles}")
    directory = run_dir()
    lock = claim_run_lock(directory)  # before the handle: a second run opens nothing
    try:
        _run_locked(config, log, worker, profiles is not None, directory, should_stop)
    finally:
        release_run_lock(lock)


def _run_locked(
    config: Config,
    log: Callable[[str], None],
    worker: divert.DivertWorker,
    watching: bool,
    directory: Path,
    should_stop: Callable[[], bool] | None,
) -> None:
    from govpass.cli.status import table
    from govpass.daemon import STRATEGY_STATS, _jsonable, write_json_atomic

    (directory / STRATEGY_STATS).unlink(missing_ok=True)
    strategies = _strategies(config, worker, log)  # a bad state directory: one line, first
    _clean_leftovers(log)
    worker.open()
    interactive = sys.stdout.isatty()
    try:
        for old in directory.glob("worker-*.json"):
            old.unlink(missing_ok=True)
        write_json_atomic(
            directory / "daemon.json",
            {
                "pid": os.getpid(),
                "started": time.time(),
                "backend": "divert",
                "config": _jsonable(config.as_dict()),
            },
        )
        q = worker.queue_applied
        log(
            f"divert handle open ({divert.implementation()}): filter {worker.filter!r}; "
            f"queue-len={q['queue-len']} queue-time={q['queue-time']}ms "
            f"queue-size={q['queue-size']}"
        )
        log(
            f"running: split-chunk={config.split_chunk} split-pos="
            f"{','.join(config.split_pos) or '-'} strategy={config.strategy} "
            "backend=divert workers=1"
        )
        if interactive:
            from rich.live import Live

            live: Any = Live(table(worker.stats()), refresh_per_second=2)
        else:
            live = nullcontext()
        last = time.monotonic()
        from govpass.cli.status import ChangeLog

        changes = ChangeLog(status_line)

        def on_tick() -> None:
            nonlocal last
            if strategies is not None:
                strategies.tick()
            now = time.monotonic()
            if now - last < config.stats_interval:
                return
            last = now
            stats = _write_stats(directory, worker, strategies)
            if interactive:
                live.update(table(stats))
            elif text := changes.due(stats):
                log(text)

        reload = worker.request_reload if watching else None
        with stop_on_signals(reload) as signalled, live:
            _write_stats(directory, worker, strategies)
            worker.run(lambda: signalled() or bool(should_stop and should_stop()), on_tick)
        if worker.error:
            raise BackendError(worker.error)
        log("stopped: held packets released, divert handle closed")
    finally:
        if worker.handle is not None:  # an error before run() closed it
            worker.close()
        final = _write_stats(directory, worker, strategies)
        (directory / "daemon.json").unlink(missing_ok=True)
        log(status_line(final))
