"""The Linux daemon: worker processes (one NFQUEUE each), rule installation,
status reporting, and clean-up on every exit path that can be caught.

Layout of a run: the parent binds nothing itself; it starts one worker per
queue (the kernel spreads flows over the queues by flow hash, so one flow
always meets one worker and no state is shared), waits until every worker has
bound its queue, then installs the rules. On SIGINT/SIGTERM or an error it
removes the rules first (new packets stop being queued) and then stops the
workers, which release every packet they hold.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from govpass.config import Config
from govpass.errors import BackendError, GovpassError

RUN_DIR_ENV = "GOVPASS_RUN_DIR"
DEFAULT_RUN_DIR = "/run/govpass"


def run_dir() -> Path:
    return Path(os.environ.get(RUN_DIR_ENV, DEFAULT_RUN_DIR))


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def rule_spec(config: Config) -> Any:
    from govpass.rules import RuleSpec

    return RuleSpec(
        queue_num=config.queue_num,
        queue_count=config.worker_count,
        mark=config.mark,
        watch_mark=config.watch_mark,
        ports=config.port_numbers,
        mode=config.mode,  # type: ignore[arg-type]
        interfaces=config.iface,
        exclude_interfaces=config.exclude_iface,
        ipv4=True,
        ipv6=config.ipv6,
    )


# ---------------------------------------------------------------- worker side


def worker_main(config: Config, index: int, ready: Any, directory: str) -> None:
    """Entry point of a worker process: bind queue `queue_num + index`, run."""
    from govpass.backends.nfqueue import NfqueueWorker

    # A parent killed with SIGKILL cannot stop its workers; without this check they
    # would keep the queue bound, so the next `govpass run` could not start.
    parent = os.getppid()
    stop = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides
    with suppress(OSError):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[index % len(cpus)]})
    queue = config.queue_num + index
    try:
        worker = NfqueueWorker(
            queue,
            config.engine_config(),
            config.mark,
            config.queue_len,
            config.ipv6,
            copy_range=config.copy_range,
        )
        worker.bind()
    except GovpassError as e:
        ready.send(("error", str(e)))
        return
    except Exception as e:  # unexpected: still one line for the parent
        ready.send(("error", f"worker {index}: {type(e).__name__}: {e}"))
        return
    ready.send(("ready", queue))
    stats_path = Path(directory) / f"worker-{index}.json"
    last_write = 0.0

    def on_tick() -> None:
        nonlocal last_write
        now = time.monotonic()
        if now - last_write >= config.stats_interval / 2:
            last_write = now
            with suppress(OSError):
                write_json_atomic(stats_path, {"queue": queue, **worker.stats()})

    try:
        worker.run(lambda: stop or os.getppid() != parent, on_tick)
    finally:
        worker.close()
        with suppress(OSError):
            write_json_atomic(stats_path, {"queue": queue, **worker.stats()})


# ---------------------------------------------------------------- parent side


@dataclass
class WorkerHandle:
    index: int
    process: Any
    restarts: int = 0


def aggregate(directory: Path) -> dict[str, Any]:
    """Sums the workers' counters and adds kernel queue drops."""
    from govpass.backends.nfqueue import queue_table

    total: dict[str, Any] = {"fail_open": {}, "workers": 0}
    queues: list[int] = []
    for path in sorted(directory.glob("worker-*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        total["workers"] += 1
        queues.append(int(data.get("queue", -1)))
        for key, value in data.items():
            if key == "queue":
                continue
            if isinstance(value, dict):
                bucket = total["fail_open"]
                for reason, n in value.items():
                    bucket[reason] = bucket.get(reason, 0) + n
            elif isinstance(value, int | float):
                total[key] = total.get(key, 0) + value
    table = queue_table()
    total["queue_dropped"] = sum(table[q]["queue_dropped"] for q in queues if q in table)
    total["user_dropped"] = sum(table[q]["user_dropped"] for q in queues if q in table)
    return total


class Daemon:
    """Owns the workers and the rules of one `govpass run`."""

    def __init__(self, config: Config, log: Callable[[str], None]) -> None:
        self.config = config
        self.log = log
        self.directory = run_dir()
        self.workers: list[WorkerHandle] = []
        self.rules_installed = False
        self._ctx = mp.get_context("fork")

    def _start_worker(self, index: int) -> WorkerHandle:
        parent_end, child_end = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=worker_main,
            args=(self.config, index, child_end, str(self.directory)),
            name=f"govpass-worker-{index}",
            daemon=True,
        )
        proc.start()
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
        return WorkerHandle(index, proc)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for old in self.directory.glob("worker-*.json"):
            old.unlink(missing_ok=True)
        write_json_atomic(
            self.directory / "daemon.json",
            {
                "pid": os.getpid(),
                "started": time.time(),
                "config": _jsonable(self.config.as_dict()),
            },
        )
        for i in range(self.config.worker_count):
            self.workers.append(self._start_worker(i))
        last = self.config.queue_num + self.config.worker_count - 1
        self.log(f"bound {self.config.worker_count} queue(s) {self.config.queue_num}..{last}")
        if self.config.firewall != "none":
            from govpass import rules

            backend = None if self.config.firewall == "auto" else self.config.firewall
            result = rules.install(rule_spec(self.config), backend=backend)  # type: ignore[arg-type]
            self.rules_installed = True
            self.log(f"rules installed with {result.backend}: {result.reason}")

    def check_workers(self) -> None:
        """Restarts a worker that died (its queue fails open meanwhile)."""
        for n, w in enumerate(self.workers):
            if w.process.is_alive():
                continue
            code = w.process.exitcode
            self.log(f"worker {w.index} exited (code {code}); restarting")
            replacement = self._start_worker(w.index)
            replacement.restarts = w.restarts + 1
            self.workers[n] = replacement

    def stats(self) -> dict[str, Any]:
        data = aggregate(self.directory)
        write_json_atomic(self.directory / "stats.json", {"pid": os.getpid(), **data})
        return data

    def stop(self) -> None:
        """Removes the rules, then stops workers (they release held packets)."""
        errors: list[str] = []
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
                os.kill(w.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for w in self.workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(1)
        with suppress(OSError):
            self.stats()
        for name in ("daemon.json",):
            (self.directory / name).unlink(missing_ok=True)
        if errors:
            raise GovpassError("; ".join(errors))


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@contextmanager
def signals_raise() -> Iterator[None]:
    """Turns SIGTERM and SIGHUP into KeyboardInterrupt, so the parent's clean-up
    path (remove rules, stop workers) runs for them as for Ctrl-C."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
