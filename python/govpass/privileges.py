"""What this process may do, and dropping what it no longer needs: root or the two
capabilities on Linux, root on FreeBSD, an elevated Administrator token on Windows.

Capabilities, no_new_privs and a seccomp filter go through libc (capset, prctl) by
ctypes: Linux only; elsewhere the drop functions do nothing and say so."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import struct
import sys
from dataclasses import dataclass

if sys.platform != "win32":  # user lookups: only the Linux daemon drops to a user
    import grp
    import pwd

CAP_CHOWN = 0
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
CAP_FOWNER = 3
CAP_KILL = 5
CAP_SETGID = 6
CAP_SETUID = 7
CAP_SETPCAP = 8
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
CAP_SYS_ADMIN = 21
CAP_SYS_RESOURCE = 24
CAP_BPF = 39
NEEDED = (("CAP_NET_ADMIN", CAP_NET_ADMIN), ("CAP_NET_RAW", CAP_NET_RAW))
CAP_NAMES = {
    CAP_CHOWN: "chown", CAP_DAC_OVERRIDE: "dac_override",
    CAP_DAC_READ_SEARCH: "dac_read_search", CAP_FOWNER: "fowner", CAP_KILL: "kill",
    CAP_SETGID: "setgid", CAP_SETUID: "setuid", CAP_SETPCAP: "setpcap",
    CAP_NET_ADMIN: "net_admin", CAP_NET_RAW: "net_raw", CAP_SYS_ADMIN: "sys_admin",
    CAP_SYS_RESOURCE: "sys_resource", CAP_BPF: "bpf",
}  # fmt: skip

# The packet loop answers nfnetlink, which checks CAP_NET_ADMIN on every message
# (verdicts too); sending on raw sockets already open needs nothing.
WORKER_CAPS = frozenset({CAP_NET_ADMIN})
# The parent re-installs rules (iptables/nft run as root with these), loads and
# pins the eBPF pre-filter and kernel split (bpf, bpffs), kills and re-forks workers
# that then change uid and drop their own bounding set, and reads the lists.
PARENT_CAPS = frozenset(
    {CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_KILL, CAP_SETGID,
     CAP_SETUID, CAP_SETPCAP, CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN, CAP_SYS_RESOURCE,
     CAP_BPF}
)  # fmt: skip

PR_SET_KEEPCAPS = 8
PR_SET_SECCOMP = 22
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2
_CAP_VERSION_3 = 0x20080522
_EPERM = 1


class PrivilegeError(OSError):
    """A drop that was asked for could not be made."""


def status_fields(pid: int | str = "self") -> dict[str, str]:
    """Uid, CapEff, NoNewPrivs and Seccomp of a process, from /proc (empty when gone)."""
    out: dict[str, str] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Uid", "Gid", "CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Seccomp"):
                    out[key] = value.split()[0] if value.split() else ""
    except OSError:
        pass
    return out


def cap_names(mask: int) -> str:
    """`net_admin,net_raw`, `none`, or `all` for a capability bit set."""
    if mask == 0:
        return "none"
    if mask >> 40 and all(mask >> b & 1 for b in range(41)):
        return "all"
    names = [CAP_NAMES.get(b, f"cap{b}") for b in range(64) if mask >> b & 1]
    return ",".join(names)


def describe(pid: int | str = "self") -> str:
    """One line of what a process holds: `uid 65534, caps net_admin, no_new_privs 1,
    seccomp 2`."""
    f = status_fields(pid)
    if not f:
        return "gone"
    try:
        caps = cap_names(int(f.get("CapEff", "0"), 16))
    except ValueError:
        caps = "unknown"
    return (
        f"uid {f.get('Uid', '?')}, caps {caps}, no_new_privs {f.get('NoNewPrivs', '?')}, "
        f"seccomp {f.get('Seccomp', '?')}"
    )


def is_admin() -> bool:
    """Root (uid 0) on Linux and FreeBSD; on Windows a token in the Administrators
    group that is elevated (what loading the WinDivert driver needs)."""
    if sys.platform == "win32":
        import ctypes

        try:
            return bool(ctypes.windll.shell32.IsUserAnAdmin())  # type: ignore[attr-defined]
        except (AttributeError, OSError):
            return False
    return os.geteuid() == 0


def effective_capabilities() -> int | None:
    """The CapEff bit set of this process (None when unknown: not Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return None


def missing_capabilities() -> list[str]:
    """Names of the needed Linux capabilities this process lacks. Root counts by its
    capabilities, not its uid: root with an emptied bounding set (a container, or
    ``setpriv --bounding-set=-all``) can neither bind a queue nor open a raw socket."""
    caps = effective_capabilities() if sys.platform.startswith("linux") else None
    if caps is None:
        return [] if is_admin() else [name for name, _ in NEEDED]
    return [name for name, bit in NEEDED if not caps >> bit & 1]


# ------------------------------------------------------------------ the target user


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


def resolve_user(name: str) -> Account | None:
    """The account workers switch to. `name` "" is the default: `govpass` if it exists,
    else `nobody`, when running as root; None: stay as we are (not root, or "root")."""
    if os.geteuid() != 0 or name == "root":
        return None
    candidates = [name] if name else ["govpass", "nobody"]
    for candidate in candidates:
        try:
            entry = pwd.getpwnam(candidate)
        except KeyError:
            continue
        if entry.pw_uid == 0:
            return None
        return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)
    if name:
        raise KeyError(name)
    return None


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# ------------------------------------------------------------------ libc calls


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(err, f"{what}: {os.strerror(err)}")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _prctl(libc: ctypes.CDLL, *args: int) -> int:
    return int(libc.prctl(*(ctypes.c_ulong(a) for a in args)))


def set_capabilities(
    libc: ctypes.CDLL, keep: frozenset[int], effective: frozenset[int] | None = None
) -> None:
    """Permitted becomes `keep` (intersected with what we have), effective `effective`
    (default: the same), inheritable and ambient empty."""
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(libc.capget(ctypes.byref(header), data), "capget")
    have = data[0].permitted | data[1].permitted << 32
    mask = have & sum(1 << c for c in keep)
    eff = mask & sum(1 << c for c in (keep if effective is None else effective))
    for i in (0, 1):
        data[i].permitted = mask >> (32 * i) & 0xFFFFFFFF
        data[i].effective = eff >> (32 * i) & 0xFFFFFFFF
        data[i].inheritable = 0
    _check(libc.capset(ctypes.byref(header), data), "capset")
    _prctl(libc, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)


def drop_bounding(libc: ctypes.CDLL, keep: frozenset[int]) -> None:
    """Removes every capability but `keep` from the bounding set (needs CAP_SETPCAP;
    without it the set stays, and so does no capability a later exec could gain)."""
    if not (effective_capabilities() or 0) >> CAP_SETPCAP & 1:
        return
    for cap in range(64):
        if cap in keep:
            continue
        if _prctl(libc, PR_CAPBSET_READ, cap, 0, 0, 0) < 0:
            break  # past the last capability this kernel knows
        _check(_prctl(libc, PR_CAPBSET_DROP, cap, 0, 0, 0), f"dropping capability {cap}")


def change_user(libc: ctypes.CDLL, account: Account, keep: frozenset[int]) -> None:
    """Becomes `account` (no supplementary groups) keeping the capabilities `keep`."""
    _check(_prctl(libc, PR_SET_KEEPCAPS, 1, 0, 0, 0), "PR_SET_KEEPCAPS")
    os.setgroups([])
    os.setresgid(account.gid, account.gid, account.gid)
    os.setresuid(account.uid, account.uid, account.uid)
    _prctl(libc, PR_SET_KEEPCAPS, 0, 0, 0, 0)
    set_capabilities(libc, keep)  # the uid change emptied the effective set


def set_no_new_privs(libc: ctypes.CDLL) -> None:
    _check(_prctl(libc, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")


# ------------------------------------------------------------------ seccomp

# Calls a packet worker never makes; denied with EPERM so that a wrong guess fails one
# call instead of killing the worker. Numbers per architecture (audit arch, table).
_DENIED = (
    "execve", "execveat", "ptrace", "mount", "umount2", "pivot_root", "chroot", "bpf",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
    "setfsuid", "setfsgid", "capset", "unshare", "setns", "keyctl", "add_key",
    "request_key", "perf_event_open", "userfaultfd", "process_vm_writev",
    "process_vm_readv", "reboot", "swapon", "swapoff", "open_tree", "move_mount",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
)  # fmt: skip
_NEW_API = {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
            "fsmount": 432, "fspick": 433, "mount_setattr": 442}  # fmt: skip
SYSCALLS: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (0xC000003E, {
        "execve": 59, "execveat": 322, "ptrace": 101, "mount": 165, "umount2": 166,
        "pivot_root": 155, "chroot": 161, "bpf": 321, "init_module": 175,
        "finit_module": 313, "delete_module": 176, "kexec_load": 246,
        "kexec_file_load": 320, "setuid": 105, "setgid": 106, "setreuid": 113,
        "setregid": 114, "setresuid": 117, "setresgid": 119, "setgroups": 116,
        "setfsuid": 122, "setfsgid": 123, "capset": 126, "unshare": 272, "setns": 308,
        "keyctl": 250, "add_key": 248, "request_key": 249, "perf_event_open": 298,
        "userfaultfd": 323, "process_vm_writev": 311, "process_vm_readv": 310,
        "reboot": 169, "swapon": 167, "swapoff": 168, **_NEW_API,
    }),
    "aarch64": (0xC00000B7, {
        "execve": 221, "execveat": 281, "ptrace": 117, "mount": 40, "umount2": 39,
        "pivot_root": 41, "chroot": 51, "bpf": 280, "init_module": 105,
        "finit_module": 273, "delete_module": 106, "kexec_load": 104,
        "kexec_file_load": 294, "setuid": 146, "setgid": 144, "setreuid": 145,
        "setregid": 143, "setresuid": 147, "setresgid": 149, "setgroups": 159,
        "setfsuid": 151, "setfsgid": 152, "capset": 91, "unshare": 97, "setns": 268,
        "keyctl": 219, "add_key": 217, "request_key": 218, "perf_event_open": 241,
        "userfaultfd": 282, "process_vm_writev": 271, "process_vm_readv": 270,
        "reboot": 142, "swapon": 224, "swapoff": 225, **_NEW_API,
    }),
}  # fmt: skip

_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JSET_K = 0x45
_BPF_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_X32_BIT = 0x40000000


def seccomp_program(machine: str) -> list[tuple[int, int, int, int]] | None:
    """Classic BPF over seccomp_data: another architecture's calls (a 32-bit
    entry, x32) are refused, the denied calls get EPERM, the rest run."""
    entry = SYSCALLS.get(machine)
    if entry is None:
        return None
    arch, table = entry
    deny = (_BPF_RET_K, 0, 0, _RET_ERRNO | _EPERM)
    prog = [(_BPF_LD_W_ABS, 0, 0, 4), (_BPF_JEQ_K, 1, 0, arch), deny, (_BPF_LD_W_ABS, 0, 0, 0)]
    if machine == "x86_64":
        prog += [(_BPF_JSET_K, 0, 1, _X32_BIT), deny]
    numbers = sorted({table[name] for name in _DENIED})
    for i, nr in enumerate(numbers):
        # jump to the deny at the end when equal: past the remaining tests and the allow
        prog.append((_BPF_JEQ_K, len(numbers) - i, 0, nr))
    prog += [(_BPF_RET_K, 0, 0, _RET_ALLOW), deny]
    return prog


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_seccomp(libc: ctypes.CDLL) -> bool:
    """Installs the filter on this thread (and the threads it starts later);
    False where the architecture has no table. Needs no_new_privs first."""
    prog = seccomp_program(platform.machine())
    if prog is None:
        return False
    raw = b"".join(struct.pack("=HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SockFprog(len(prog), ctypes.cast(buf, ctypes.c_void_p))
    rc = libc.prctl(
        ctypes.c_ulong(PR_SET_SECCOMP),
        ctypes.c_ulong(SECCOMP_MODE_FILTER),
        ctypes.byref(fprog),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
    )
    _check(rc, "PR_SET_SECCOMP")
    return True


# ------------------------------------------------------------------ the two process kinds


def drop_worker(account: Account | None, readable: list[str]) -> None:
    """A worker after binding its queue and opening its raw sockets: becomes
    `account` (when given) with CAP_NET_ADMIN only, then no_new_privs and seccomp.
    `readable`: list files the list thread re-reads; when the new user cannot open one,
    CAP_DAC_READ_SEARCH stays so reloads keep working."""
    libc = _libc()
    if libc is None:
        return
    keep = WORKER_CAPS
    caps = effective_capabilities() or 0
    if not (caps >> CAP_SETUID & 1 and caps >> CAP_SETGID & 1):
        account = None  # root without CAP_SETUID/SETGID (a narrowed root) keeps its uid
    if account is not None:
        held = keep | {CAP_DAC_READ_SEARCH, CAP_SETPCAP}  # SETPCAP: the bounding drop
        change_user(libc, account, held)
        set_capabilities(libc, held, keep | {CAP_SETPCAP})  # try the lists without it
        if not all(_can_open(p) for p in readable):
            keep = keep | {CAP_DAC_READ_SEARCH}
        set_capabilities(libc, held)
    drop_bounding(libc, keep)
    set_capabilities(libc, keep)
    set_no_new_privs(libc)
    install_seccomp(libc)


def drop_parent() -> None:
    """The daemon's own process: keeps PARENT_CAPS, the bounding set likewise (so the
    iptables/nft it runs get no more)."""
    libc = _libc()
    if libc is None or os.geteuid() != 0:
        return  # not root (the unit): the iptables/nft it runs need its ambient set
    drop_bounding(libc, PARENT_CAPS)
    set_capabilities(libc, PARENT_CAPS)


def _can_open(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return True  # a missing list is reported by the reload itself
    except OSError:
        return False
    os.close(fd)
    return True
