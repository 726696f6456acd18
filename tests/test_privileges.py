"""The capability, no_new_privs and seccomp helpers, each applied in a forked child so
the test process keeps what it holds."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import re
import socket
import termios
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from govpass import privileges
from govpass.privileges import CAP_NET_ADMIN, Account, seccomp_program, status_fields
from govpass.runtime.state import write_json_atomic

linux = pytest.mark.skipif(platform.system() != "Linux", reason="Linux capabilities")
seccomp_arch = pytest.mark.skipif(
    platform.machine() not in privileges.ARCHES, reason="no seccomp table here"
)


def in_child(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Runs `work` in a forked child and returns what it reported."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            out = work()
        except BaseException as e:
            out = {"error": f"{type(e).__name__}: {e}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(data)
    return result


def try_call(call: Callable[[], object]) -> int:
    try:
        call()
    except OSError as e:
        return e.errno or -1
    return 0


def after_drop(account: Account | None) -> dict[str, Any]:
    privileges.drop_worker(account, [])
    return {
        **status_fields(),
        "execve": try_call(lambda: os.execv("/bin/true", ["true"])),
        "setuid": try_call(lambda: os.setuid(os.getuid())),
        "chroot": try_call(lambda: os.chroot("/")),
        "getppid": try_call(os.getppid),  # an ordinary call still runs
    }


def refused_and_allowed(tmp: str) -> dict[str, Any]:
    """What a dropped worker may still do, and what it may not (errno per call)."""
    opened = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # before, like the queue's
    privileges.drop_worker(None, [])
    out: dict[str, Any] = {}
    for name, family, kind in (
        ("inet", socket.AF_INET, socket.SOCK_STREAM),
        ("inet6", socket.AF_INET6, socket.SOCK_DGRAM),
        ("packet", socket.AF_PACKET, socket.SOCK_RAW),
        ("netlink", socket.AF_NETLINK, socket.SOCK_RAW),
        ("unix", socket.AF_UNIX, socket.SOCK_STREAM),
    ):
        out[f"socket_{name}"] = try_call(lambda f=family, k=kind: socket.socket(f, k))
    out["fork"] = try_call(os.fork)
    out["kill"] = try_call(lambda: os.kill(os.getppid(), 0))
    out["pipe"] = try_call(os.pipe)
    ran: list[int] = []
    thread = threading.Thread(target=lambda: ran.append(1))  # clone3 -> clone, a thread
    out["thread"] = try_call(thread.start)
    thread.join(5)
    out["thread_ran"] = ran == [1]
    path = Path(tmp) / "stats.json"
    out["write"] = try_call(lambda: write_json_atomic(path, {"a": 1}))
    out["read"] = path.read_text(encoding="ascii")
    with open(path, "rb") as f:  # an ioctl Python makes: allowed (ENOTTY: not a terminal)
        out["tcgets"] = try_call(lambda: fcntl.ioctl(f.fileno(), termios.TCGETS, bytes(64)))
    # An interface change CAP_NET_ADMIN would allow (ENODEV for the empty name).
    out["siocsifflags"] = try_call(lambda: fcntl.ioctl(opened.fileno(), 0x8914, bytes(40)))
    out["sendto"] = try_call(lambda: opened.sendto(b"x", ("127.0.0.1", 9)))
    return out


@linux
@seccomp_arch
def test_a_dropped_worker_runs_its_calls_and_gets_eperm_for_the_rest(tmp_path: Path) -> None:
    out = in_child(lambda: refused_and_allowed(str(tmp_path)))
    assert "error" not in out, out
    for name in ("inet", "inet6", "packet", "netlink", "unix"):
        assert out[f"socket_{name}"] == errno.EPERM, (name, out)
    assert out["fork"] == out["kill"] == out["pipe"] == errno.EPERM, out
    assert out["siocsifflags"] == errno.EPERM, out
    assert out["thread"] == 0 and out["thread_ran"], out
    assert out["write"] == 0 and out["read"] == '{"a": 1}', out
    assert out["tcgets"] == errno.ENOTTY, out
    assert out["sendto"] == 0, out


@linux
@seccomp_arch
def test_worker_drop_keeps_net_admin_sets_no_new_privs_and_denies_with_eperm() -> None:
    out = in_child(lambda: after_drop(None))
    assert "error" not in out, out
    expected = 1 << CAP_NET_ADMIN if os.geteuid() == 0 else 0
    assert int(out["CapEff"], 16) == expected and int(out["CapPrm"], 16) == expected, out
    if os.geteuid() == 0:
        assert int(out["CapBnd"], 16) == expected, out
    assert out["NoNewPrivs"] == "1" and out["Seccomp"] == "2", out
    assert out["execve"] == out["setuid"] == out["chroot"] == errno.EPERM, out
    assert out["getppid"] == 0, out


@linux
@seccomp_arch
def test_worker_drop_changes_user_and_keeps_only_net_admin() -> None:
    if os.geteuid() != 0:
        pytest.skip("changing user needs root")
    out = in_child(lambda: after_drop(Account("nobody", 65534, 65534)))
    assert "error" not in out, out
    assert out["Uid"] == "65534" and out["Gid"] == "65534", out
    assert int(out["CapEff"], 16) == 1 << CAP_NET_ADMIN, out


@linux
def test_worker_keeps_dac_read_search_only_for_a_list_it_cannot_open(tmp_path: Any) -> None:
    if os.geteuid() != 0:
        pytest.skip("changing user needs root")
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    (hidden / "list.txt").write_text("a.example\n")
    listed = str(hidden / "list.txt")

    def drop() -> dict[str, Any]:
        privileges.drop_worker(Account("nobody", 65534, 65534), [listed])
        with open(listed, encoding="ascii") as f:  # the reload path: still readable
            return {**status_fields(), "read": f.read()}

    out = in_child(drop)
    assert "error" not in out, out
    dac_read_search = 1 << privileges.CAP_DAC_READ_SEARCH
    assert int(out["CapEff"], 16) == 1 << CAP_NET_ADMIN | dac_read_search, out
    assert out["read"] == "a.example\n"


def test_seccomp_program_checks_the_architecture_first() -> None:
    for machine in privileges.ARCHES:
        prog = seccomp_program(machine)
        assert prog is not None
        deny = (0x06, 0, 0, 0x00050000 | errno.EPERM)
        assert prog[0] == (0x20, 0, 0, 4)  # load seccomp_data.arch
        assert prog[1][3] == privileges.ARCHES[machine][0]
        assert prog[1 + 1 + prog[1][2]] == deny  # another architecture: refused
        for i, (code, jt, jf, _) in enumerate(prog):  # every jump lands inside
            if code in (0x15, 0x45):
                assert i + 1 + max(jt, jf) < len(prog), (machine, i)
        assert prog[-1][0] == 0x06  # no path runs off the end
    assert seccomp_program("sparc") is None


def test_the_allow_list_keeps_the_old_deny_list_out() -> None:
    assert not set(privileges.NEVER) & set(privileges.ALLOWED)
    for name in ("clone", "clone3", "ioctl"):  # allowed only through their own checks
        assert name not in privileges.ALLOWED


HEADER = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
GENERIC = Path("/usr/include/asm-generic/unistd.h")  # aarch64's table


@pytest.mark.skipif(not (HEADER.exists() and GENERIC.exists()), reason="no kernel headers")
def test_the_numbers_are_the_kernels() -> None:
    x86 = dict(re.findall(r"#define __NR_(\w+) (\d+)", HEADER.read_text()))
    generic = dict(re.findall(r"#define __NR(?:3264)?_(\w+) (\d+)", GENERIC.read_text()))
    generic["newfstatat"] = generic["fstatat"]
    for name, (on_x86, on_arm) in privileges.ALLOWED.items():
        assert int(x86[name]) == on_x86, name
        assert (int(generic[name]) if name in generic else None) == on_arm, name
    for name, nrs in (("clone", privileges.CLONE), ("ioctl", privileges.IOCTL),
                      ("clone3", privileges.CLONE3)):  # fmt: skip
        assert (int(x86[name]), int(generic[name])) == nrs, name


def test_resolve_user() -> None:
    if os.geteuid() != 0:
        assert privileges.resolve_user("") is None
        return
    assert privileges.resolve_user("root") is None
    with pytest.raises(KeyError):
        privileges.resolve_user("no-such-user-x")
    default = privileges.resolve_user("")
    assert default is not None and default.name in ("govpass", "nobody")


def test_cap_names() -> None:
    assert privileges.cap_names(0) == "none"
    assert privileges.cap_names(1 << 12 | 1 << 13) == "net_admin,net_raw"
    assert privileges.cap_names((1 << 41) - 1) == "all"
