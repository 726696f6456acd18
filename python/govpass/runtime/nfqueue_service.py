"""`govpass run` with the NFQUEUE backend (Linux), the parent side: worker
processes (one NFQUEUE each, govpass.runtime.nfqueue_worker), rule
installation, status reporting, and clean-up on every exit path that can be
caught. It runs under the runtime's loop (govpass.runtime.service) like every
other backend.

Layout of a run: the parent binds nothing itself; it starts one worker per
queue (the kernel spreads flows over the queues by flow hash, so one flow
always meets one worker and no state is shared), waits until every worker has
bound its queue, then installs the rules. On SIGINT/SIGTERM or an error it
removes the rules first (new packets stop being queued) and then stops the
workers, which release every packet they hold. SIGHUP is passed on to the
workers, which re-read their host lists and IP sets (they also notice changed
files by themselves); auto-learning verdicts come back from the workers over a
pipe to the parent's :class:`~govpass.autolearn.AutoLearner`.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import select
import signal
import stat
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from govpass import privileges
from govpass.config import Config
from govpass.errors import BackendError, ConfigError, GovpassError
from govpass.queue_counters import BypassCount, read_queue_table
from govpass.quoting import quote
from govpass.rules.from_config import firewall_preference, rule_spec
from govpass.runtime.nfqueue_worker import worker_main
from govpass.runtime.run_lock import claim_run_lock
from govpass.runtime.state import (
    DAEMON_STATE,
    KERNEL_SPLIT_STATS,
    LEARNER_STATS,
    QUEUE_STATS,
    RETIRED,
    STATS,
    STRATEGY_STATS,
    WORKERS,
    add_counters,
    aggregate,
    jsonable,
    run_dir,
    write_json_atomic,
)
from govpass.runtime.status import line, running
from govpass.strategy import config_start
from govpass.watchdog import Heartbeats, check_interval


def _close_quietly(fd: int) -> None:
    with suppress(OSError):
        os.close(fd)


def _rules_now() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """govpass's rules as installed now, as comparable text."""
    from govpass.rules import inventory

    return tuple((item.where, item.lines) for item in inventory())


def make_worker_dir(directory: Path, account: Any) -> Path:
    sub = directory / WORKERS
    with suppress(FileExistsError):
        os.mkdir(sub, 0o750)
    st = os.lstat(sub)
    if not stat.S_ISDIR(st.st_mode):
        raise BackendError(f"run directory {directory}: {WORKERS} is not a directory")
    uid = account.uid if account is not None else os.geteuid()
    gid = os.getegid()
    if (st.st_uid, st.st_gid) != (uid, gid):
        # Without CAP_CHOWN the workers cannot start either: their error says why.
        with suppress(PermissionError):
            os.chown(sub, uid, gid, follow_symlinks=False)
    os.chmod(sub, 0o750)  # lstat above: not a symlink
    return sub


@dataclass
class WorkerHandle:
    index: int
    process: Any
    restarts: int = 0


def strategy_starts(config: Config) -> dict[str, Any]:
    """State-file scope -> the split its hosts start with, for every profile that
    learns strategies (strategy_learner.DEFAULT_SCOPE: `--strategy auto` itself)."""
    from govpass.strategy import Strategy
    from govpass.strategy_learner import DEFAULT_SCOPE
    from govpass.targeting import specs_from_config

    specs = specs_from_config(config)
    if not specs:
        return {DEFAULT_SCOPE: config_start(config)} if config.strategy == "auto" else {}
    return {s.state_key: Strategy(s.split_chunk, tuple(s.split_pos)) for s in specs if s.learns}


class NfqueueService:
    """Owns the workers and the rules of one `govpass run`."""

    def __init__(self, config: Config, log: Callable[[str], None]) -> None:
        self.config = config
        self.log = log
        self.directory = run_dir()
        self.workers: list[WorkerHandle] = []
        self.rules_installed = False
        self.owns_run_dir = False
        self.account = self._account()
        self.final_stats: dict[str, Any] = {}  # the counters as they were at stop()
        self.spec: Any = None
        self._spec_checked = 0.0
        self._ctx = mp.get_context("fork")
        self.learner: Any = None  # govpass.autolearn.AutoLearner when a profile learns
        # govpass.strategy_learner.StrategyKeeper when some profile learns strategies
        self.strategies: Any = None
        self._strategy_checked = 0.0
        # The lists as last loaded here, for workers started again (worker_targeting).
        self.profiles: list[Any] | None = None
        self._lists: Any = None  # a quiet ListWatcher keeping self.profiles current
        # It runs on a thread (a large list takes seconds to parse, and the watchdog
        # checks must go on); a fork waits while that thread reads, parses or logs,
        # so that no child inherits a lock the thread held.
        self._list_thread: Any = None
        self._fork_lock = threading.Lock()
        self._events: tuple[int, int] | None = None  # (read, write) ends of the verdict pipe
        self._reader: Any = None
        self.kernel_split: Any = None  # govpass.kernel_split.KernelSplit while it is on
        self.kernel_split_summary = "off (no rules installed)"  # when kernel_split is None
        self._kernel_counters: dict[str, int] = {}  # its counters when it closed
        self.heartbeats = Heartbeats(config.worker_count, self._ctx)
        # Counters of replaced workers and restart counts (RETIRED in the run dir).
        self.retired: dict[str, Any] = {"watchdog_restarts": 0, "worker_restarts": 0}
        self._checked = 0.0
        self._run_lock: int | None = None  # flock on the run directory's daemon.lock
        self._instance: Any = None  # the namespace's daemon socket (govpass.instance)
        self._rules_seen: Any = None  # the rules as installed, to notice changes by hand
        self._rules_broken = False  # a reinstall after such a change failed (logged once)
        self._rules_unreadable = False  # the rules could not be read (logged once)
        self._installed: Any = None  # the rules' InstallResult, to read their counters
        # Packets the queues passed by (no worker bound, or the queue full).
        self.bypass = BypassCount(range(config.queue_num, config.queue_num + config.worker_count))
        self._bypass_logged = 0

    def _account(self) -> Any:
        """The user workers become (validated here, so a bad `user` stops the start)."""
        try:
            return privileges.resolve_user(self.config.user)
        except KeyError:
            raise ConfigError(
                f"invalid user: {quote(self.config.user)} (accepted: an existing user name, "
                "or root to keep uid 0)",
                field="user",
            ) from None

    def _start_worker(self, index: int) -> WorkerHandle:
        parent_end, child_end = self._ctx.Pipe(duplex=False)
        events_fd = self._events[1] if self._events else -1
        proc = self._ctx.Process(
            target=worker_main,
            args=(
                self.config,
                index,
                child_end,
                str(self.directory),
                events_fd,
                self.log,
                self.profiles,
                self.heartbeats,
                self.account,
            ),
            name=f"govpass-worker-{index}",
            daemon=True,
        )
        # A SIGHUP before the child has its handler would kill it: blocked until then.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            with self._fork_lock:
                proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        child_end.close()
        if not parent_end.poll(10.0):
            proc.kill()
            raise BackendError(f"worker {index} did not bind its queue within 10 s")
        try:
            status, detail = parent_end.recv()
        except EOFError as e:
            raise BackendError(f"worker {index} exited before binding its queue") from e
        if status != "ready":
            proc.join(2)
            raise BackendError(str(detail))
        self.heartbeats.beat(index)  # bound: its loop starts now
        return WorkerHandle(index, proc)

    def _start_targeting(self) -> None:
        """Reads the lists once here, so a bad file stops the start with one line."""
        from govpass.autolearn import EventReader, learner_for
        from govpass.list_thread import ListThread
        from govpass.targeting import ListWatcher, Targeting

        targeting = Targeting.from_config(self.config)
        if not targeting.active:
            return
        # As the workers take them: parts when they merge them with learned strategies.
        parts = targeting.learns
        self.profiles = targeting.build_parts() if parts else targeting.build()
        self._lists = ListWatcher(targeting, self._set_profiles, parts=parts)
        self._list_thread = ListThread(self._lists, self._fork_lock).start()
        self.log(f"profiles: {targeting.summary}")
        self.learner = learner_for(self.config, self.log)
        if self.learner is not None:
            r, w = os.pipe()
            os.set_blocking(w, False)
            self._events = (r, w)
            self._reader = EventReader()

    def _start_strategies(self) -> None:
        """--strategy auto: the learner, what the state file knew, and the verdict pipe."""
        from govpass.autolearn import EventReader
        from govpass.strategy import ladder
        from govpass.strategy_learner import StrategyKeeper

        starts = strategy_starts(self.config)
        if not starts:
            return
        self.strategies = StrategyKeeper(
            Path(self.config.strategy_state),
            starts,
            ladder(self.config.strategy_ladder),
            self.config.strategy_unfixable_time,
            self.log,
        )
        if self._events is None:
            r, w = os.pipe()
            os.set_blocking(w, False)
            self._events = (r, w)
            self._reader = EventReader()

    def start(self) -> None:
        from govpass import instance

        lock = claim_run_lock(self.directory)  # makes it 0750, refused when others can write
        self._run_lock = lock
        # Forked workers must not keep the lock alive after this process is gone.
        os.register_at_fork(after_in_child=lambda: _close_quietly(lock))
        self._instance = instance.claim()
        self.owns_run_dir = True
        if self.config.firewall != "none":  # a firewall that cannot work: one line, first
            from govpass import rules

            rules.preflight(rule_spec(self.config), backend=firewall_preference(self.config))
        for old in self.directory.glob("worker-*.json"):
            old.unlink(missing_ok=True)
        for old in (make_worker_dir(self.directory, self.account)).glob("worker-*.json"):
            old.unlink(missing_ok=True)
        (self.directory / LEARNER_STATS).unlink(missing_ok=True)
        (self.directory / KERNEL_SPLIT_STATS).unlink(missing_ok=True)
        (self.directory / STRATEGY_STATS).unlink(missing_ok=True)
        (self.directory / QUEUE_STATS).unlink(missing_ok=True)
        self._start_targeting()
        self._start_strategies()
        write_json_atomic(
            self.directory / DAEMON_STATE,
            {
                "pid": os.getpid(),
                "started": time.time(),
                "config": jsonable(self.config.as_dict()),
            },
        )
        for i in range(self.config.worker_count):
            self.workers.append(self._start_worker(i))
        last = self.config.queue_num + self.config.worker_count - 1
        self.log(f"bound {self.config.worker_count} queue(s) {self.config.queue_num}..{last}")
        if self.config.firewall != "none":
            from govpass import rules

            gate = self._open_kernel_split()
            self.spec = rule_spec(self.config, gate=gate)
            result = rules.install(self.spec, backend=firewall_preference(self.config))
            self.rules_installed = True
            self._installed = result
            self._spec_checked = time.monotonic()
            self._rules_seen = _rules_now()
            self.log(f"rules installed with {result.backend}: {result.reason}")
            self.log(f"pre-filter: {result.prefilter_summary}")
            self._start_kernel_split(result.prefilter)
            self._record_rules(result.backend, result.prefilter_summary)
        self._drop_privileges()

    def _drop_privileges(self) -> None:
        """The parent keeps what rule re-installation, the kernel split and list reloads
        need; then the log says what each kind of process holds."""
        if self.config.user != "root":
            try:
                privileges.drop_parent()
            except OSError as e:
                self.log(f"privileges: could not narrow the daemon's capabilities: {e}")
        self.log(f"privileges: daemon {privileges.describe()}")
        if self.workers:
            self.log(f"privileges: workers {privileges.describe(self.workers[0].process.pid)}")

    def _open_kernel_split(self) -> Any:
        """The kernel split's gate for the rules, or None (with the reason logged)."""
        from govpass.bpf.syscall import BpfError
        from govpass.kernel_split import KernelSplit, config_reason

        why = config_reason(self.config)
        if why is None:
            ks = KernelSplit(self.config, self.log)
            try:
                gate = ks.open()
            except (BpfError, OSError) as e:
                why = f"cannot load its eBPF program: {e.strerror or e}"
            else:
                self.kernel_split = ks
                return gate
        self._kernel_split_off(why)
        return None

    def _kernel_split_off(self, why: str) -> None:
        """Closes the kernel split (if open) and says why it is off."""
        self._close_kernel_split()
        self.kernel_split_summary = f"off ({why})"
        self.log(f"kernel split: {self.kernel_split_summary}")

    def _start_kernel_split(self, prefilter: str) -> None:
        ks = self.kernel_split
        if ks is None:
            return
        if prefilter != "bpf":
            self._kernel_split_off("the rules use the conntrack pre-filter")
            return
        try:
            ks.sync(self.spec)
        except OSError as e:  # the gate stays off: every hello goes to the workers
            self._kernel_split_off(str(e))
            return
        try:
            ks.watch()
        except OSError as e:
            self.log(f"kernel split: interfaces that appear later stay with the workers ({e})")

    def _close_kernel_split(self) -> None:
        if self.kernel_split is not None:
            self.kernel_split.close()
            self._kernel_counters = self.kernel_split.counters()
            self.kernel_split = None

    def _record_rules(self, backend: str, prefilter: str) -> None:
        """Adds what the rules use to daemon.json, for `govpass stats`."""
        path = self.directory / DAEMON_STATE
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        info["rules"] = {"backend": backend, "prefilter": prefilter}
        write_json_atomic(path, info)

    def check_workers(self) -> None:
        """Restarts a worker that died, and kills and restarts one whose packet loop
        has not run for `worker-timeout` seconds (stopped or hung: the kernel would
        hold its hellos until the queue is full). Its queue fails open meanwhile."""
        self._checked = time.monotonic()
        # Each queue's count so far: a worker killed below, or one that died since the
        # last look, takes its queue's id_sequence with it.
        self.bypass.observe_queues(read_queue_table())
        hung = set(
            self.heartbeats.hung([w.index for w in self.workers], self.config.worker_timeout)
        )
        for n, w in enumerate(self.workers):
            if w.index in hung and w.process.is_alive():
                age = self.heartbeats.age(w.index)
                self.log(
                    f"worker {w.index} (pid {w.process.pid}) has not run for {age:.1f} s "
                    f"(worker-timeout {self.config.worker_timeout:g}): killed, its queue "
                    "fails open; restarting"
                )
                w.process.kill()
                w.process.join(5)
                self.retired["watchdog_restarts"] += 1
            elif w.process.is_alive():
                continue
            else:
                self.log(f"worker {w.index} exited (code {w.process.exitcode}); restarting")
            self._retire(w.index)
            replacement = self._start_worker(w.index)
            replacement.restarts = w.restarts + 1
            self.workers[n] = replacement

    def healthy(self) -> bool:
        """Every worker alive and its packet loop run within `worker-timeout` (what
        :meth:`check_workers` restarts otherwise): systemd's watchdog waits meanwhile."""
        if not self.workers or not all(w.process.is_alive() for w in self.workers):
            return False
        indexes = [w.index for w in self.workers]
        return not self.heartbeats.hung(indexes, self.config.worker_timeout)

    def _retire(self, index: int) -> None:
        """Moves a replaced worker's last counters into the retired total, so that
        `govpass stats` keeps counting what it did."""
        self.retired["worker_restarts"] += 1
        path = self.directory / WORKERS / f"worker-{index}.json"
        with suppress(OSError, ValueError):
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                add_counters(self.retired, data, gauges=False)
        path.unlink(missing_ok=True)
        with suppress(OSError):
            write_json_atomic(self.directory / RETIRED, self.retired)

    def refresh_interfaces(self, every: float = 5.0) -> None:
        """Re-detects tunnel/VPN interfaces (a VPN may come up or go down) and
        reinstalls the rules when the exclusions change, or when someone removed
        or changed them (`govpass rules remove --force`, a firewall reload)."""
        if not self.rules_installed or time.monotonic() - self._spec_checked < every:
            return
        self._spec_checked = time.monotonic()
        if self._instance is not None:
            from govpass import instance

            instance.drain(self._instance)
        gate = self.kernel_split.gate if self.kernel_split is not None else None
        spec = rule_spec(self.config, gate=gate)
        if spec == self.spec:
            self._check_rules()
            return
        before, after = set(self.spec.exclude_interfaces), set(spec.exclude_interfaces)
        self._reinstall(spec)
        self.log(
            f"interfaces changed (now excluded: {', '.join(sorted(after)) or 'none'}; "
            f"added {sorted(after - before)}, removed {sorted(before - after)}): rules reinstalled"
        )

    def _reinstall(self, spec: Any) -> None:
        from govpass import rules

        self._count_bypassed()  # what the rules counted until now: reinstalled they restart
        self._installed = rules.install(spec, backend=firewall_preference(self.config))
        self.bypass.rules_replaced()
        self.spec = spec
        if self.kernel_split is not None:
            self.kernel_split.sync(spec)
        self._rules_seen = _rules_now()

    def _check_rules(self) -> None:
        """Puts the rules back when they are not as installed; one log line per
        event (a failing reinstall is retried quietly until it works)."""
        try:
            now = _rules_now()
        except GovpassError as e:  # cannot look now; the next check will
            if not self._rules_unreadable:
                self.log(f"cannot read the installed rules to check them: {e}")
            self._rules_unreadable = True
            return
        if self._rules_unreadable:
            self.log("the installed rules can be read again")
        self._rules_unreadable = False
        if now == self._rules_seen:
            self._rules_broken = False
            return
        what = "removed" if not now else "changed"
        try:
            self._reinstall(self.spec)
        except GovpassError as e:
            if not self._rules_broken:
                self.log(f"rules {what} from outside govpass; cannot reinstall them: {e}")
            self._rules_broken = True
            return
        self._rules_broken = False
        self.log(f"rules {what} from outside govpass: reinstalled")

    def _set_profiles(self, profiles: list[Any]) -> None:
        self.profiles = profiles

    def reloader(self) -> Callable[[], None]:
        return self.reload

    def running_line(self) -> str:
        return running(self.config, f"mode={self.config.mode}")

    def serve(self, stopped: Callable[[], bool], tick: Callable[[], None]) -> None:
        """The parent's loop: verdicts and list updates as they come (see :meth:`wait`),
        and every stats interval the workers' health, the interfaces and a status tick."""
        while not stopped():
            self.wait(self.config.stats_interval, stopped)
            if stopped():
                break
            self.check_workers()
            self.refresh_interfaces()
            tick()

    def status_line(self, stats: dict[str, Any]) -> str:
        return line(stats)

    def reload(self) -> None:
        """SIGHUP: every worker re-reads its lists (and resolves interfaces again)."""
        self.log("SIGHUP: reloading host lists and IP sets")
        if self._list_thread is not None:
            self._list_thread.request()
        for w in self.workers:
            if w.process.is_alive():
                with suppress(ProcessLookupError):
                    os.kill(w.process.pid, signal.SIGHUP)

    def wait(self, seconds: float, stopped: Callable[[], bool] = lambda: False) -> None:
        """Sleeps `seconds` (less once `stopped()` says so: it is asked at least every
        0.25 s), meanwhile handing the workers' auto-learning verdicts to the learner
        as they arrive and keeping its own copy of the lists current."""
        deadline = time.monotonic() + seconds
        every = check_interval(self.config.worker_timeout)
        while (left := deadline - time.monotonic()) > 0 and not stopped():
            step = min(left, 0.25)
            step = max(0.0, min(step, self._checked + every - time.monotonic()))
            if self._events is None:
                time.sleep(step)
            elif select.select([self._events[0]], [], [], step)[0]:
                self.take_events(os.read(self._events[0], 65536))
            if self._list_thread is not None:
                self._list_thread.take()
            if self.strategies is not None and time.monotonic() >= self._strategy_checked + 1:
                self._strategy_checked = time.monotonic()
                self.strategies.tick()
            # Not once a stop was asked for: Ctrl-C and systemd's stop signal the workers
            # too, and their exit is then no crash to restart them for.
            if time.monotonic() >= self._checked + every and not stopped():
                self.check_workers()

    def take_events(self, data: bytes) -> None:
        learned = []
        for profile, host, failed in self._reader.feed(data):
            if self.strategies is not None and self.strategies.book.owns(profile):
                learned.append((profile, host, failed))
            elif self.learner is not None:
                self.learner.observe(profile, host, failed)
        if learned:
            self.strategies.observe(learned)

    def stats(self) -> dict[str, Any]:
        if not self.owns_run_dir:  # refused at the start: the directory is another's, or unsafe
            return {}
        if self.learner is not None:
            with suppress(OSError):
                write_json_atomic(self.directory / LEARNER_STATS, self.learner.stats())
        if self.strategies is not None:
            with suppress(OSError):
                write_json_atomic(self.directory / STRATEGY_STATS, self.strategies.stats())
        with suppress(OSError):
            write_json_atomic(self.directory / KERNEL_SPLIT_STATS, self.kernel_split_state())
        self._count_bypassed()
        data = aggregate(self.directory)
        write_json_atomic(self.directory / STATS, {"pid": os.getpid(), **data})
        return data

    def _count_bypassed(self) -> None:
        """Writes `bypassed` (see govpass.queue_counters) for `govpass stats`, and logs
        when it grew."""
        if self.rules_installed and self._installed is not None:
            from govpass.errors import FirewallError
            from govpass.rules.counters import queue_packets

            try:
                packets = queue_packets(self._installed)
            except (FirewallError, OSError):
                packets = None
            self.bypass.observe(packets, read_queue_table())
        value = self.bypass.value
        if value is None:
            return
        with suppress(OSError):
            write_json_atomic(self.directory / QUEUE_STATS, {"bypassed": value})
        if value > self._bypass_logged:
            self.log(
                f"{value - self._bypass_logged} packet(s) passed unmodified without a worker "
                f"(none bound to the queue, or the queue full): {value} since the start"
            )
            self._bypass_logged = value

    def kernel_split_state(self) -> dict[str, Any]:
        """The kernel split's counters and one line saying whether it is on, and where."""
        ks = self.kernel_split
        counters = ks.counters() if ks is not None else self._kernel_counters
        summary = ks.summary() if ks is not None else self.kernel_split_summary
        return {**counters, "state": summary}

    def stop(self) -> dict[str, Any]:
        """Closes the kernel split's gate and links (hellos go to the workers), removes
        the rules, then stops workers (they release held packets); returns the last
        counters (also kept as :attr:`final_stats`)."""
        errors: list[str] = []
        if self._list_thread is not None:
            self._list_thread.close(timeout=0.1)
        self._close_kernel_split()
        with suppress(OSError):  # the last count, while the rules still have theirs
            self._count_bypassed()
        if self.rules_installed:
            from govpass import rules

            try:
                rules.remove()
                self.rules_installed = False
                self.log("rules removed")
            except GovpassError as e:
                errors.append(str(e))
        for w in self.workers:
            if w.process.is_alive():
                try:
                    os.kill(w.process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass  # gone meanwhile
                except OSError as e:  # e.g. EPERM: killed below, as a stuck worker is
                    errors.append(f"cannot signal worker {w.index} (pid {w.process.pid}): {e}")
        deadline = time.monotonic() + 5
        for w in self.workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                with suppress(OSError):  # refused: said above
                    w.process.kill()
                w.process.join(1)
        with suppress(OSError):
            self.final_stats = self.stats()
        if self.owns_run_dir:  # a clean stop leaves no state behind: the log has the counters
            state = [DAEMON_STATE, KERNEL_SPLIT_STATS, LEARNER_STATS, STATS]
            state += [STRATEGY_STATS, QUEUE_STATS]
            for path in [
                *self.directory.glob("worker-*.json"),
                *(self.directory / WORKERS).glob("worker-*.json"),
                *(self.directory / n for n in state),
            ]:
                try:
                    path.unlink(missing_ok=True)
                except OSError as e:
                    errors.append(f"cannot remove {path}: {e.strerror}")
        if self._events is not None:
            with suppress(OSError):  # verdicts the workers sent while stopping
                while select.select([self._events[0]], [], [], 0)[0]:
                    data = os.read(self._events[0], 65536)
                    if not data:
                        break
                    self.take_events(data)
            for fd in self._events:
                with suppress(OSError):
                    os.close(fd)
            self._events = None
        if errors:
            raise GovpassError("; ".join(errors))
        return self.final_stats
