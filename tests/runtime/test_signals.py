"""Stop and reload signals: handlers whatever the inherited disposition."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from govpass.runtime.signals import signals_raise, stop_on_signals


@contextmanager
def disposition(sig: int, handler: Any) -> Iterator[None]:
    old = signal.signal(sig, handler)
    try:
        yield
    finally:
        signal.signal(sig, old)


def test_a_stop_sets_the_flag_instead_of_raising() -> None:
    with disposition(signal.SIGTERM, signal.SIG_DFL), stop_on_signals() as stopped:
        assert not stopped()
        signal.raise_signal(signal.SIGTERM)
        assert stopped()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_inherited_ignore_does_not_keep_a_stop_signal_out(sig: int) -> None:
    """nohup, `&` in a script: SIGINT arrives ignored; it must stop all the same."""
    with disposition(sig, signal.SIG_IGN):
        with stop_on_signals() as stopped:
            signal.raise_signal(sig)
            assert stopped()
        assert signal.getsignal(sig) is signal.SIG_IGN  # given back as it was


def test_sighup_reloads_when_asked_and_stops_otherwise() -> None:
    reloads: list[int] = []
    with disposition(signal.SIGHUP, lambda s, f: None):
        with stop_on_signals(lambda: reloads.append(1)) as stopped:
            signal.raise_signal(signal.SIGHUP)
            assert reloads == [1] and not stopped()
        with stop_on_signals() as stopped:
            signal.raise_signal(signal.SIGHUP)
            assert stopped()


def test_sighup_reloads_even_under_nohup_but_does_not_stop_there() -> None:
    reloads: list[int] = []
    with disposition(signal.SIGHUP, signal.SIG_IGN):
        with stop_on_signals(lambda: reloads.append(1)):
            signal.raise_signal(signal.SIGHUP)
        assert reloads == [1]
        with stop_on_signals() as stopped:  # nothing to reload: nohup's ignore stands
            signal.raise_signal(signal.SIGHUP)
            assert not stopped()


def test_signals_raise_turns_every_stop_signal_into_keyboard_interrupt() -> None:
    calls: list[str] = []
    with disposition(signal.SIGHUP, lambda s, f: None):
        with signals_raise(lambda: calls.append("reload")):
            signal.raise_signal(signal.SIGHUP)
            assert calls == ["reload"]
            for sig in (signal.SIGTERM, signal.SIGINT):
                with pytest.raises(KeyboardInterrupt):
                    signal.raise_signal(sig)
        with pytest.raises(KeyboardInterrupt), signals_raise():  # no reload: SIGHUP stops
            signal.raise_signal(signal.SIGHUP)


CHILD = """
import os, signal, sys, time
from govpass.runtime.signals import signals_raise
try:
    with signals_raise():
        print("ready", flush=True)
        time.sleep(30)
except KeyboardInterrupt:
    print("stopped", flush=True)
"""


def test_a_process_started_with_sigint_ignored_stops_on_sigint() -> None:
    """What the shell does to `cmd &` in a script, in a real process."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
        assert out == "stopped\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
