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
from dataclasses import dataclass

from govpass import host_os

if not host_os.is_windows():  # user lookups: only the Linux daemon drops to a user
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
# What the daemon's own process needs once it is running, each one found by running
# the lab without it (tests/e2e/test_e2e_privileges.py). Not kept: CAP_FOWNER (nothing
# failed), CAP_BPF (CAP_SYS_ADMIN covers bpf()), CAP_SYS_RESOURCE (no rlimit raised).
PARENT_CAPS = frozenset(
    {
        CAP_CHOWN,  # a rewritten auto list keeps its owner (another user)
        CAP_DAC_OVERRIDE,  # removes a dead worker's counter file from the workers' directory
        CAP_DAC_READ_SEARCH,  # a restarted worker whose user cannot read the lists keeps it
        CAP_KILL,  # SIGHUP, SIGTERM and the watchdog's SIGKILL to workers of another uid
        CAP_SETGID,  # a restarted worker changes group
        CAP_SETUID,  # and user
        CAP_SETPCAP,  # and empties its bounding set
        CAP_NET_ADMIN,  # iptables/nft, a restarted worker's queue, tcx attach
        CAP_NET_RAW,  # a restarted worker's raw sockets with a mark
        CAP_SYS_ADMIN,  # the private bpf file system each rule install mounts; bpf()
    }
)

PR_SET_KEEPCAPS = 8
PR_SET_SECCOMP = 22
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_LOG = 2
_SECCOMP_SYSCALL = {"x86_64": 317, "aarch64": 277}
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
    if host_os.is_windows():
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
    caps = effective_capabilities() if host_os.is_linux() else None
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
    if not host_os.is_linux():
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

# The calls a worker makes once its sockets are open, found by tracing workers of
# every packet path (Rust loop, Python loop, QUIC filtering, list reloads, strategy
# auto, stop) with `strace -f`, plus the neighbours the C library and Python pick
# instead on another kernel or version (stat variants, poll/select/epoll, nanosleep).
# Anything else gets EPERM, so a call missed here fails that one call (the packet
# path fails open) instead of killing the worker.
# name: (x86_64, aarch64); None where the architecture has no such call.
ALLOWED: dict[str, tuple[int, int | None]] = {
    "read": (0, 63), "write": (1, 64), "readv": (19, 65), "writev": (20, 66),
    "pread64": (17, 67), "pwrite64": (18, 68), "close": (3, 57), "lseek": (8, 62),
    "openat": (257, 56), "open": (2, None), "fstat": (5, 80), "newfstatat": (262, 79),
    "statx": (332, 291), "stat": (4, None), "lstat": (6, None), "fcntl": (72, 25),
    "dup": (32, 23), "dup3": (292, 24), "getdents64": (217, 61), "mmap": (9, 222),
    "munmap": (11, 215), "mremap": (25, 216), "mprotect": (10, 226), "madvise": (28, 233),
    "brk": (12, 214), "futex": (202, 98), "sched_yield": (24, 124),
    "sched_getaffinity": (204, 123), "clock_gettime": (228, 113), "clock_getres": (229, 114),
    "clock_nanosleep": (230, 115), "nanosleep": (35, 101), "gettimeofday": (96, 169),
    "poll": (7, None), "ppoll": (271, 73), "select": (23, None), "pselect6": (270, 72),
    "epoll_create1": (291, 20), "epoll_ctl": (233, 21), "epoll_wait": (232, None),
    "epoll_pwait": (281, 22), "epoll_pwait2": (441, 441), "recvfrom": (45, 207),
    "recvmsg": (47, 212), "recvmmsg": (299, 243), "sendto": (44, 206), "sendmsg": (46, 211),
    "sendmmsg": (307, 269), "setsockopt": (54, 208), "getsockopt": (55, 209),
    "getsockname": (51, 204), "rt_sigaction": (13, 134), "rt_sigprocmask": (14, 135),
    "rt_sigreturn": (15, 139), "sigaltstack": (131, 132), "restart_syscall": (219, 128),
    "getpid": (39, 172), "gettid": (186, 178), "getppid": (110, 173), "getuid": (102, 174),
    "geteuid": (107, 175), "getgid": (104, 176), "getegid": (108, 177), "exit": (60, 93),
    "exit_group": (231, 94), "set_robust_list": (273, 99), "rseq": (334, 293),
    "rename": (82, None), "renameat": (264, 38), "renameat2": (316, 276), "fchmod": (91, 52),
    "unlink": (87, None), "unlinkat": (263, 35), "getrandom": (318, 278), "uname": (63, 160),
    "sysinfo": (99, 179), "getrusage": (98, 165), "membarrier": (324, 283),
    "readlink": (89, None), "readlinkat": (267, 78), "access": (21, None),
    "faccessat": (269, 48), "faccessat2": (439, 439), "getcwd": (79, 17),
    "prlimit64": (302, 261), "fsync": (74, 82), "fdatasync": (75, 83), "ftruncate": (77, 46),
}  # fmt: skip
# Allowed with their arguments checked: clone only for a thread (no new process);
# ioctl only for the terminal and non-blocking queries Python and the C library make
# (not the SIOCS* interface changes CAP_NET_ADMIN would otherwise allow).
CLONE = (56, 220)
IOCTL = (16, 29)
# clone3 passes its flags in memory a filter cannot read: ENOSYS makes the C library
# start threads with clone instead.
CLONE3 = (435, 435)
CLONE_THREAD = 0x00010000
IOCTLS = (0x5401, 0x5413, 0x541B, 0x5421, 0x5451)  # TCGETS TIOCGWINSZ FIONREAD FIONBIO FIOCLEX
# What the deny-list this replaced refused, and never in ALLOWED (a test checks):
# exec, tracing, mounts, modules, kexec, uid/gid/capability changes, namespaces,
# keys, perf, userfaultfd, other processes' memory, reboot, swap, bpf, new sockets.
NEVER = (
    "execve", "execveat", "ptrace", "mount", "umount2", "pivot_root", "chroot", "bpf",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
    "setfsuid", "setfsgid", "capset", "unshare", "setns", "keyctl", "add_key",
    "request_key", "perf_event_open", "userfaultfd", "process_vm_writev",
    "process_vm_readv", "reboot", "swapon", "swapoff", "open_tree", "move_mount",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "socket", "socketpair",
    "kill", "tkill", "tgkill", "fork", "vfork", "prctl", "seccomp", "ioperm", "iopl",
)  # fmt: skip
ARCHES = {"x86_64": (0xC000003E, 0), "aarch64": (0xC00000B7, 1)}  # audit arch, column

_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JSET_K = 0x45
_BPF_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_ENOSYS = 38
_X32_BIT = 0x40000000
_NR, _ARCH, _ARG0, _ARG1 = 0, 4, 16, 24  # seccomp_data offsets (low words: little-endian)

Instruction = tuple[int, int, int, int]
_Labelled = tuple[int, str | None, str | None, int]  # jumps by label, resolved at the end


def seccomp_program(machine: str) -> list[Instruction] | None:
    """Classic BPF over seccomp_data: another architecture's calls (a 32-bit entry,
    x32) and every call not allowed get EPERM; None where there is no table."""
    entry = ARCHES.get(machine)
    if entry is None:
        return None
    arch, column = entry
    numbers = (nrs[column] for nrs in ALLOWED.values())
    allowed = sorted({nr for nr in numbers if nr is not None})
    # (code, label if true, label if false, k): labels name the blocks at the end.
    body: list[_Labelled] = [
        (_BPF_LD_W_ABS, None, None, _ARCH),
        (_BPF_JEQ_K, None, "deny", arch),
        (_BPF_LD_W_ABS, None, None, _NR),
    ]
    if machine == "x86_64":
        body.append((_BPF_JSET_K, "deny", None, _X32_BIT))
    body += [
        (_BPF_JEQ_K, "enosys", None, CLONE3[column]),
        (_BPF_JEQ_K, "clone", None, CLONE[column]),
        (_BPF_JEQ_K, "ioctl", None, IOCTL[column]),
    ]
    body += [(_BPF_JEQ_K, "allow", None, nr) for nr in allowed]
    allow: _Labelled = (_BPF_RET_K, None, None, _RET_ALLOW)
    deny: _Labelled = (_BPF_RET_K, None, None, _RET_ERRNO | _EPERM)
    # Blocks at the end, each after every jump into it (classic BPF jumps forward only).
    blocks: dict[str, list[_Labelled]] = {
        "deny": [deny],
        "allow": [allow],
        "enosys": [(_BPF_RET_K, None, None, _RET_ERRNO | _ENOSYS)],
        "clone": [
            (_BPF_LD_W_ABS, None, None, _ARG0),
            (_BPF_JSET_K, None, "clone_deny", CLONE_THREAD),
            allow,
        ],
        "clone_deny": [deny],
        "ioctl": [
            (_BPF_LD_W_ABS, None, None, _ARG1),
            *((_BPF_JEQ_K, "ioctl_allow", None, cmd) for cmd in IOCTLS),
            deny,
        ],
        "ioctl_allow": [allow],
    }
    prog = list(body)
    at: dict[str, int] = {}
    for label, block in blocks.items():  # the deny block first: the fall-through
        at[label] = len(prog)
        prog += block
    return [
        (code, _offset(at, jt, i), _offset(at, jf, i), k)
        for i, (code, jt, jf, k) in enumerate(prog)
    ]


def _offset(at: dict[str, int], label: str | None, i: int) -> int:
    """A jump from instruction `i` to `label`: forward, within classic BPF's 8 bits."""
    if label is None:
        return 0
    off = at[label] - i - 1
    if not 0 <= off <= 255:
        raise ValueError(f"seccomp program: jump to {label} out of range")
    return off


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_seccomp(libc: ctypes.CDLL) -> bool:
    """Installs the filter on this thread (and the threads it starts later);
    False where the architecture has no table. Needs no_new_privs first.

    Through seccomp(2) with SECCOMP_FILTER_FLAG_LOG where the kernel has it: each
    refused call is then recorded by the kernel (audit record type 1326 naming the
    call, in the journal or dmesg), which is how a call missing from ALLOWED shows."""
    machine = platform.machine()
    prog = seccomp_program(machine)
    if prog is None:
        return False
    raw = b"".join(struct.pack("=HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SockFprog(len(prog), ctypes.cast(buf, ctypes.c_void_p))
    nr = _SECCOMP_SYSCALL[machine]
    rc = libc.syscall(
        ctypes.c_long(nr),
        ctypes.c_ulong(SECCOMP_SET_MODE_FILTER),
        ctypes.c_ulong(SECCOMP_FILTER_FLAG_LOG),
        ctypes.byref(fprog),
    )
    if rc == 0:
        return True
    rc = libc.prctl(  # an older kernel: no seccomp(2), or no logging flag
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
