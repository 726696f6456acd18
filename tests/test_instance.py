"""One daemon per network namespace: the abstract socket, tried for real in a fresh
network namespace (``unshare --net``, root only) so nothing here meets the host's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.netns

SCRIPT = r"""
import json, os, signal, subprocess, sys, time
from govpass import instance
from govpass.errors import BackendError

out = {}
sock = instance.claim()
second = subprocess.run(
    [sys.executable, "-c",
     "from govpass import instance\n"
     "try:\n    instance.claim()\nexcept Exception as e:\n    print(type(e).__name__, e)"],
    capture_output=True, text=True)
out["second"] = second.stdout.strip()
found = instance.find()
out["found"] = [found.pid, found.uid] if found else None
for _ in range(100):  # lookups beyond the backlog still find it
    instance.find()
instance.drain(sock)
out["found_after_many"] = instance.find() is not None
try:
    instance.refuse_if_running("remove", force=False)
except BackendError as e:
    out["refused"] = str(e)
instance.refuse_if_running("remove", force=True)
# A forked child (a worker) does not keep the name once the parent is gone.
r, w = os.pipe()
child = os.fork()
if child == 0:  # the fork handlers have run by now
    os.write(w, b"x")
    time.sleep(3)
    os._exit(0)
os.read(r, 1)
sock.close()
out["after_close"] = instance.find() is not None
os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
print(json.dumps(out))
"""


def test_a_second_claim_in_one_namespace_is_refused_with_the_holder() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("needs root and unshare(1) for a private network namespace", pytrace=False)
    proc = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["second"].startswith("BackendError another govpass daemon (pid ")
    assert "already running in this network namespace" in out["second"]
    assert out["found"][1] == 0 and out["found"][0] > 0
    assert out["found_after_many"]
    assert out["refused"].startswith("a govpass daemon (pid ")
    assert "--force" in out["refused"]
    assert not out["after_close"], "a forked child kept the name"


def test_namespaces_do_not_see_each_other() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("needs root and unshare(1) for a private network namespace", pytrace=False)
    code = "from govpass import instance; s = instance.claim(); print('ok')"
    procs = [
        subprocess.Popen(
            ["unshare", "--net", sys.executable, "-c", code + "; import time; time.sleep(2)"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert outs == ["ok\n", "ok\n"]
