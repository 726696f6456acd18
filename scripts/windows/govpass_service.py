"""govpass as a Windows service, hosted by pywin32 (no NSSM).

install-service.ps1 copies this file to %ProgramData%\\govpass and registers it
(``python govpass_service.py --startup auto install``); the Service Control
Manager then starts it as LocalSystem, which may load the WinDivert driver.

The service runs ``govpass run --backend divert`` in-process: settings from
%ProgramData%\\govpass\\govpass.toml when present (defaults otherwise; the
backend is forced to divert), log lines appended to
%ProgramData%\\govpass\\govpass.log, stats in %ProgramData%\\govpass\\run (set
GOVPASS_RUN_DIR to that folder to read them with ``govpass stats``).

Stop: the SCM's stop request sets a flag the run loop polls (signals do not
reach a service); held packets are released, the handle closed. On an error
the process exits non-zero without reporting "stopped", so the recovery
actions set by install-service.ps1 restart it.

NOT RUN: written and syntax-checked on Linux only.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import servicemanager  # type: ignore[import-not-found]
import win32service  # type: ignore[import-not-found]
import win32serviceutil  # type: ignore[import-not-found]

DATA_DIR = Path(os.environ.get("PROGRAMDATA", r"C:\ProgramData")) / "govpass"
CONFIG_FILE = DATA_DIR / "govpass.toml"
LOG_FILE = DATA_DIR / "govpass.log"
RUN_DIR = DATA_DIR / "run"


class GovpassService(win32serviceutil.ServiceFramework):  # type: ignore[misc]
    _svc_name_ = "govpass"
    _svc_display_name_ = "govpass"
    _svc_description_ = (
        "Splits the first TLS ClientHello of outbound HTTPS connections into several "
        "TCP segments (WinDivert). Never changes TLS bytes; fails open."
    )

    def __init__(self, args: list[str]) -> None:
        super().__init__(args)
        self._stop = threading.Event()

    def SvcStop(self) -> None:
        self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=15000)
        self._stop.set()

    def SvcDoRun(self) -> None:
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        os.environ["GOVPASS_RUN_DIR"] = str(RUN_DIR)
        with LOG_FILE.open("a", encoding="utf-8") as log_file:

            def log(msg: str) -> None:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
                log_file.write(f"{stamp} govpass: {msg}\n")
                log_file.flush()

            try:
                from govpass import config as config_mod
                from govpass.runtime.divert_service import run_divert

                config_file = CONFIG_FILE if CONFIG_FILE.exists() else None
                config = config_mod.load(config_file, flags={"backend": "divert"})
                servicemanager.LogInfoMsg("govpass: starting (WinDivert)")
                run_divert(config, log, should_stop=self._stop.is_set)
            except Exception as e:  # one line in the log and the event log, then exit
                log(f"error: {e}")
                servicemanager.LogErrorMsg(f"govpass: {e}")
                log_file.flush()
                os._exit(1)  # not "stopped": the SCM counts a failure and restarts
        servicemanager.LogInfoMsg("govpass: stopped")


if __name__ == "__main__":
    if len(sys.argv) == 1:  # started by the SCM
        servicemanager.Initialize()
        servicemanager.PrepareToHostSingle(GovpassService)
        servicemanager.StartServiceCtrlDispatcher()
    else:  # install / remove / start / stop / debug
        win32serviceutil.HandleCommandLine(GovpassService)
