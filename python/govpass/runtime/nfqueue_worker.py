"""An NFQUEUE worker process: one queue, one engine, its lists, its counters.

The parent (govpass.runtime.nfqueue_service) starts one per queue with
:func:`worker_main`; the worker binds its queue, tells the parent it is ready,
drops to the workers' user and capabilities (govpass.privileges), then runs
the packet loop until SIGTERM, releasing every packet it holds on the way out.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from govpass import privileges
from govpass.config import Config
from govpass.errors import ConfigError, GovpassError
from govpass.runtime.state import WORKERS, write_json_at
from govpass.strategy import config_start
from govpass.watchdog import Heartbeats


def worker_targeting(
    config: Config,
    engine: Any,
    index: int,
    log: Callable[[str], None] | None = None,
    fallback: list[Any] | None = None,
    mixer: Any = None,
) -> tuple[Any, Any]:
    """(targeting, list watcher or None) of a worker, its engine's profiles set.

    A worker started again while a list file is broken gets `fallback`, the
    profiles the parent last loaded, instead of failing: the previous lists stay
    in force, as in the workers that kept running. With learned strategies the
    lists go to `mixer` (a strategy_learner.ProfileMixer) as parts, and so does
    `fallback`."""
    from govpass.targeting import ListWatcher, Targeting

    targeting = Targeting.from_config(config)
    if not targeting.active:
        return targeting, None
    try:
        profiles = targeting.build() if mixer is None else targeting.build_parts()
    except ConfigError as e:
        if fallback is None:
            raise
        if log is not None:
            log(f"worker {index}: {e}; using the previous lists")
        profiles = fallback
    apply = engine.set_profiles if mixer is None else mixer.lists
    apply(profiles)
    quiet = index != 0 or log is None
    watcher = ListWatcher(targeting, apply, None if quiet else log, parts=mixer is not None)
    return targeting, watcher


def worker_main(
    config: Config,
    index: int,
    ready: Any,
    directory: str,
    events_fd: int = -1,
    log: Callable[[str], None] | None = None,
    fallback: list[Any] | None = None,
    beats: Heartbeats | None = None,
    account: Any = None,
) -> None:
    """Entry point of a worker process: bind queue `queue_num + index`, run.

    `events_fd`: write end of the parent's auto-learning pipe (-1: none);
    `log`: where worker 0 reports list reloads (the others stay quiet, they
    read the same files); `fallback`: see :func:`worker_targeting`; `beats`:
    the slot this worker's packet loop stamps for the parent's watchdog; `account`:
    the user it becomes once its sockets are open (None: it keeps its uid)."""
    from govpass.autolearn import send_events
    from govpass.backends.nfqueue import NfqueueWorker
    from govpass.list_thread import ListThread
    from govpass.strategy_learner import ProfileMixer, StrategyFeed, default_part
    from govpass.targeting import learns_strategies

    # A parent killed with SIGKILL cannot stop its workers; without this check they
    # would keep the queue bound, so the next `govpass run` could not start.
    parent = os.getppid()
    stop = False
    hup = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    def on_hup(signum: int, frame: Any) -> None:
        nonlocal hup
        hup = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # blocked around fork
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides
    with suppress(OSError):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[index % len(cpus)]})
    if config.worker_sched == "batch":
        # A batch task does not preempt the running one when a packet wakes it:
        # under load it takes the packets that queued meanwhile in one go
        # instead of a context switch per connection (measured in the lab:
        # connections/s x0.72 -> x0.80-0.87 against no splitter, CPU per
        # connection halved); on an idle CPU it runs at once as before.
        with suppress(OSError, AttributeError):
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    queue = config.queue_num + index
    try:
        worker = NfqueueWorker(
            queue,
            config.engine_config(),
            config.mark,
            config.queue_len,
            config.ipv6,
            copy_range=config.copy_range,
            quic_listed=config.block_quic == "listed",
            packet_loop=config.packet_loop,
            inject=config.inject,
        )
        learns = learns_strategies(config)
        mixer = ProfileMixer([], worker.engine.set_profiles) if learns else None
        targeting, watcher = worker_targeting(config, worker.engine, index, log, fallback, mixer)
        if mixer is not None and not targeting.active:  # --strategy auto for every host
            mixer.lists([default_part(config_start(config))])
        worker.bind()
        stats_dir = os.open(
            Path(directory) / WORKERS, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        )
        if config.user != "root":
            _preload()  # modules imported later may lie where the new user cannot read
            files = [str(p) for p in targeting.files()] if watcher is not None else []
            if learns:  # the worker re-reads the learned strategies too
                files.append(config.strategy_state)
            privileges.drop_worker(account, files)
    except GovpassError as e:
        ready.send(("error", str(e)))
        return
    except Exception as e:  # unexpected: still one line for the parent
        ready.send(("error", f"worker {index}: {type(e).__name__}: {e}"))
        return
    feed = None
    if mixer is not None:
        feed = StrategyFeed(Path(config.strategy_state), mixer.learned)
        feed.poll()  # the strategies known now, before the first packet
        feed.take()
        feed.start()
    ready.send(("ready", queue))
    # Reloads are read and parsed on a thread; the timer below only swaps them in.
    lists = ListThread(watcher).start() if watcher is not None else None
    stats_name = f"worker-{index}.json"
    last_write = 0.0
    learning = events_fd >= 0 and (targeting.auto or feed is not None)
    dropped = 0

    def pass_events() -> None:
        nonlocal dropped
        events = worker.engine.take_events()
        if events and learning:
            dropped += send_events(events_fd, events)

    def on_tick() -> None:
        nonlocal last_write, hup
        now = time.monotonic()
        if lists is not None:
            if hup:
                hup = False
                lists.request()
            lists.take()
        if feed is not None:
            feed.take()
        if lists is not None or feed is not None:
            pass_events()
        if now - last_write >= config.stats_interval / 2:
            last_write = now
            try:
                write_json_at(stats_dir, stats_name, {"queue": queue, **_worker_stats()})
            except OSError as e:
                write_failed(e)

    failed_once = False

    def write_failed(e: OSError) -> None:
        """Says once that the counters cannot be written (the packet loop goes on)."""
        nonlocal failed_once
        if failed_once or log is None:
            return
        failed_once = True
        why = os.strerror(e.errno) if e.errno else str(e)
        hint = " (a call the seccomp filter refuses: the kernel log names it)"
        log(f"worker {index}: cannot write its counters: {why}" + (hint if e.errno == 1 else ""))

    def _worker_stats() -> dict[str, Any]:
        s = worker.stats()
        if lists is not None:
            s.update(list_reloads=lists.reloads, list_errors=lists.failures)
        if feed is not None:
            s.update(strategy_reloads=feed.reloads, strategy_reload_errors=feed.failures)
        if learning:
            s["auto_events_dropped"] = dropped
        return s

    def beat(now: float) -> None:
        if beats is not None:
            beats.beat(index, now)

    try:
        worker.run(lambda: stop or os.getppid() != parent, on_tick, beat)
    finally:
        if feed is not None:
            feed.close()
        worker.close()
        with suppress(OSError):
            pass_events()
        with suppress(OSError):
            write_json_at(stats_dir, stats_name, {"queue": queue, **_worker_stats()})


def _preload() -> None:
    """Imports what a worker may import lazily after it changed user."""
    import gzip  # noqa: F401
    import json  # noqa: F401
    import zlib  # noqa: F401

    import govpass.autolearn
    import govpass.reading  # noqa: F401
