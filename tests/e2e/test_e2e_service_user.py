"""The daemon as scripts/govpass.service runs it: a non-root uid holding only the unit's
capabilities, its config file and run directory, stopped with SIGTERM, then the unit's
ExecStopPost (`govpass rules remove`) as the same user. Through the first-packet
censor in the netns lab, with the split seen on the wire."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from e2e_support import (
    BLOCKED,
    PACKAGE_ROOT,
    Govpass,
    censoring,
    govpass_rule_lines,
    hello_flows,
)
from govpass.lab import Lab

pytestmark = pytest.mark.netns

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
UNIT = SCRIPTS / "govpass.service"
SERVICE_UID = 65534  # nobody: like the unit's dynamic user, owns no file of the install
CAP_BITS = {"net_admin": 12, "net_raw": 13}


def unit_setting(name: str) -> str:
    found = re.findall(rf"^{name}=(.*)$", UNIT.read_text(), re.M)
    assert len(found) == 1, f"{UNIT} sets {name} {len(found)} times"
    return str(found[0]).strip()


def unit_caps() -> list[str]:
    caps = [c.lower().removeprefix("cap_") for c in unit_setting("AmbientCapabilities").split()]
    assert caps and set(caps) <= set(CAP_BITS), caps
    return caps


def as_unit_user(caps: list[str]) -> list[str]:
    """setpriv as the unit does it: the uid, no groups, only these capabilities."""
    c = ",".join(f"+{cap}" for cap in caps)
    uid = str(SERVICE_UID)
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
            f"--bounding-set=-all,{c}", f"--inh-caps=-all,{c}", f"--ambient-caps=-all,{c}",
            "--"]  # fmt: skip


def hidden_dirs(paths: Iterable[str]) -> dict[str, set[str]]:
    """Directories others may not search (e.g. /root holding pyenv's Python) on the way
    to `paths`, each with the entries below it that the interpreter needs."""
    hidden: dict[str, set[str]] = {}
    for p in paths:
        parts = Path(p).resolve().parts
        for i in range(1, len(parts)):
            d = Path(*parts[:i])
            if not d.stat().st_mode & stat.S_IXOTH:
                hidden.setdefault(str(d), set()).add(parts[i])
                break
    return hidden


def exposing(hold: Path) -> list[str]:
    """A private mount namespace in which the interpreter is reachable by the unit's user:
    a world-searchable tmpfs over each hidden directory with only the needed entries bound
    back in. An installed govpass (/opt/govpass) needs none of this."""
    paths = [sys.executable, sys.base_prefix, sys.prefix, str(PACKAGE_ROOT)]
    paths += [p for p in sys.path if p and os.path.exists(p)]
    lines = ["set -e"]
    for n, (d, entries) in enumerate(sorted(hidden_dirs(paths).items())):
        keep = shlex.quote(str(hold / str(n)))
        lines += [f"mkdir -p {keep}", f"mount --bind {shlex.quote(d)} {keep}",
                  f"mount -t tmpfs -o mode=0755 govpass-test {shlex.quote(d)}"]  # fmt: skip
        for entry in sorted(entries):
            src, dst = shlex.quote(f"{hold / str(n)}/{entry}"), shlex.quote(f"{d}/{entry}")
            lines.append(f"if [ -d {src} ]; then mkdir {dst}; else : > {dst}; fi")
            lines.append(f"mount --bind {src} {dst}")
    lines.append('exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(lines), "sh"]


@contextlib.contextmanager
def service_files() -> Iterator[tuple[Path, Path, Path]]:
    """(config, run directory owned by the unit's user, mount scratch) as the unit has them."""
    base = Path(tempfile.mkdtemp(prefix="govpass-svc-"))
    try:
        base.chmod(0o711)
        config = base / "govpass.toml"
        shutil.copyfile(SCRIPTS / "govpass.toml", config)
        config.chmod(0o644)
        run_dir = base / "run"  # RuntimeDirectory=govpass: the user's own, mode 0700
        run_dir.mkdir(mode=0o700)
        os.chown(run_dir, SERVICE_UID, SERVICE_UID)
        hold = base / "hold"
        hold.mkdir(mode=0o700)
        yield config, run_dir, hold
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_service_user_starts_splits_and_stops_with_rules_gone(host_lab: Lab) -> None:
    caps = unit_caps()
    with service_files() as (config, run_dir, hold), censoring(host_lab, "firstpacket"):
        ok, detail = host_lab.client("curl", BLOCKED, family=4)
        assert not ok, f"the censor should block without govpass: {detail}"
        wrapper = [*exposing(hold), *as_unit_user(caps)]
        args = ["--config", str(config)]
        gp = Govpass(host_lab, "client", args, wrapper=wrapper, run_dir=run_dir).start()
        try:
            status = Path(f"/proc/{gp.pid}/status").read_text()
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            assert fields["Uid"].split() == [str(SERVICE_UID)] * 4, fields["Uid"]
            want = sum(1 << CAP_BITS[c] for c in caps)
            assert int(fields["CapEff"], 16) == want, fields["CapEff"]
            with host_lab.capture("client") as ccap:
                ok, detail = host_lab.client("curl", BLOCKED, family=4)
            assert ok, f"{detail}\n{gp.log()[-2000:]}"
            flows = [f for f in hello_flows(ccap.flows()) if f.sni == BLOCKED]
            assert flows, [f.summary() for f in ccap.flows()]
            for flow in flows:
                assert flow.sizes[0] == 5 and len(flow.sizes) >= 2, flow.summary()
        finally:
            rc = gp.stop()  # SIGTERM, what systemctl stop sends
        log = gp.log()
        assert rc == 0, log[-2000:]
        assert "pre-filter: conntrack" in log and "rules removed" in log, log[-2000:]
        # ExecStopPost, as the same user: nothing left, and that is success.
        env = ["env", f"PYTHONPATH={PACKAGE_ROOT}", f"GOVPASS_RUN_DIR={run_dir}"]
        argv = [*env, *wrapper, sys.executable, "-m", "govpass", "rules", "remove"]
        post = host_lab.exec("client", argv, check=False)
        assert post.returncode == 0, post.stdout + post.stderr
    assert govpass_rule_lines(host_lab, "client") == []
