"""The capability, no_new_privs and seccomp helpers, each applied in a forked child so
the test process keeps what it holds."""

from __future__ import annotations

import errno
import json
import os
import platform
from collections.abc import Callable
from typing import Any

import pytest
from govpass import privileges
from govpass.privileges import CAP_NET_ADMIN, Account, seccomp_program, status_fields

linux = pytest.mark.skipif(platform.system() != "Linux", reason="Linux capabilities")
seccomp_arch = pytest.mark.skipif(
    platform.machine() not in privileges.SYSCALLS, reason="no seccomp table here"
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
        "pipe": try_call(os.pipe),  # an ordinary call still runs
    }


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
    assert out["pipe"] == 0, out


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
    prog = seccomp_program("x86_64")
    assert prog is not None
    assert prog[0] == (0x20, 0, 0, 4)  # load seccomp_data.arch
    assert prog[1][3] == 0xC000003E and prog[2] == (0x06, 0, 0, 0x00050000 | errno.EPERM)
    assert prog[-2] == (0x06, 0, 0, 0x7FFF0000) and prog[-1] == prog[2]
    # Every comparison jumps to the final deny.
    for i, (code, jt, _, _) in enumerate(prog):
        if code == 0x15 and i > 1:
            assert i + 1 + jt == len(prog) - 1
    assert seccomp_program("sparc") is None


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
