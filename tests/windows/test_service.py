"""scripts/windows/govpass_service.py, the Windows service wrapper, with pywin32's
three modules replaced by recorders: the stop request reaches the run loop, the
settings file is read with the backend forced to divert, an error exits non-zero
(so the Service Control Manager's recovery restarts it)."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest
from govpass.config import Config
from govpass.runtime import divert_service

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "windows" / "govpass_service.py"
STOP_PENDING = 3  # win32service.SERVICE_STOP_PENDING


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []


def load_service(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Any, Recorder]:
    rec = Recorder()
    monkeypatch.setenv("PROGRAMDATA", str(tmp_path))
    monkeypatch.delenv("GOVPASS_RUN_DIR", raising=False)

    class ServiceFramework:
        def __init__(self, args: list[str]) -> None:
            self.args = args

        def ReportServiceStatus(self, status: int, waitHint: int = 0) -> None:
            rec.events.append(("status", status))

    sm = types.ModuleType("servicemanager")
    sm.LogInfoMsg = lambda m: rec.events.append(("info", m))  # type: ignore[attr-defined]
    sm.LogErrorMsg = lambda m: rec.events.append(("error", m))  # type: ignore[attr-defined]
    ws = types.ModuleType("win32service")
    ws.SERVICE_STOP_PENDING = STOP_PENDING  # type: ignore[attr-defined]
    wsu = types.ModuleType("win32serviceutil")
    wsu.ServiceFramework = ServiceFramework  # type: ignore[attr-defined]
    for name, module in (("servicemanager", sm), ("win32service", ws), ("win32serviceutil", wsu)):
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("govpass_service", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, rec


def test_stop_request_ends_the_run_and_reports_stopped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module, rec = load_service(monkeypatch, tmp_path)
    started = threading.Event()
    seen: dict[str, Any] = {}

    def fake_run(config: Config, log: Any, should_stop: Any) -> None:
        seen["config"], seen["run_dir"] = config, os.environ.get("GOVPASS_RUN_DIR")
        started.set()
        while not should_stop():
            started.wait(0.01)
        log("stopped: held packets released, divert handle closed")

    monkeypatch.setattr(divert_service, "run_divert", fake_run)
    service = module.GovpassService(["govpass"])
    runner = threading.Thread(target=service.SvcDoRun)
    runner.start()
    assert started.wait(10)
    assert runner.is_alive(), "the run returned before the stop request"
    service.SvcStop()
    runner.join(10)
    assert not runner.is_alive()
    data = tmp_path / "govpass"
    assert seen["config"].backend == "divert"
    assert seen["run_dir"] == str(data / "run")
    assert ("status", STOP_PENDING) in rec.events
    assert rec.events[-1] == ("info", "govpass: stopped")
    log = (data / "govpass.log").read_text(encoding="utf-8")
    assert log.rstrip().endswith("govpass: stopped: held packets released, divert handle closed")


def test_settings_file_is_read_with_the_backend_forced_to_divert(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module, _ = load_service(monkeypatch, tmp_path)
    (tmp_path / "govpass").mkdir()
    (tmp_path / "govpass" / "govpass.toml").write_text(
        'backend = "nfqueue"\nsplit-chunk = 7\n', encoding="utf-8"
    )
    seen: list[Config] = []
    monkeypatch.setattr(divert_service, "run_divert", lambda c, log, should_stop: seen.append(c))
    module.GovpassService(["govpass"]).SvcDoRun()
    assert [(c.backend, c.split_chunk) for c in seen] == [("divert", 7)]


def test_an_error_is_logged_and_exits_non_zero(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module, rec = load_service(monkeypatch, tmp_path)

    def broken(config: Config, log: Any, should_stop: Any) -> None:
        raise divert_service.BackendError("cannot open WinDivert: the driver is missing")

    def exit_now(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(divert_service, "run_divert", broken)
    monkeypatch.setattr(module.os, "_exit", exit_now)
    with pytest.raises(SystemExit) as ended:
        module.GovpassService(["govpass"]).SvcDoRun()
    assert ended.value.code == 1
    log = (tmp_path / "govpass" / "govpass.log").read_text(encoding="utf-8")
    assert "govpass: error: cannot open WinDivert: the driver is missing" in log
    assert ("error", "govpass: cannot open WinDivert: the driver is missing") in rec.events
    assert ("info", "govpass: stopped") not in rec.events
