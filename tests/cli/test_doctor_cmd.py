"""`govpass doctor` as a real non-root uid, piped."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# The interpreter and its packages may live where uid 65534 cannot read (root's
# home): the child runs doctor once as root, which imports every module it needs,
# then drops to uid/gid 65534 with no groups (and so no capabilities) and runs it
# again; the second output is the one that counts.
AS_NOBODY = """
import contextlib, io, os, sys
from govpass.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        main(["doctor"])
    except SystemExit:
        pass
    with contextlib.suppress(ImportError):
        import netfilterqueue  # noqa: F401  (probed with find_spec, which reads the disk)
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
assert os.geteuid() == 65534
main(["doctor"])
"""


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become uid 65534")
def test_as_non_root_it_says_root_is_needed_one_check_per_line() -> None:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = subprocess.run(
        # In a network namespace of its own: the root pass probes the firewall.
        ["unshare", "--net", sys.executable, "-c", AS_NOBODY],
        capture_output=True,
        text=True,
        env={**env, "GOVPASS_RUN_DIR": "/nonexistent-govpass-run"},
        timeout=120,
        cwd="/",
    )
    out = proc.stdout
    assert proc.returncode == 1, proc.stderr  # the privileges check fails, as it should
    lines = out.splitlines()
    assert lines and all(line.split()[0] in ("ok", "warn", "FAIL") for line in lines), out
    assert any(len(line) > 80 for line in lines)  # piped: not wrapped at 80 columns
    assert "needs root (or CAP_NET_ADMIN)" in out
    for blame in ("modprobe", "apt install iptables", "pip install netfilterqueue", "None"):
        assert blame not in out, f"{blame!r} in:\n{out}"
