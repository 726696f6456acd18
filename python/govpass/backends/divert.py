"""Divert backend: WinDivert on Windows, pydivert's eBPF port of it on Linux.

``pydivert.Divert`` is one API over two implementations: the WinDivert driver
(Windows) and libebpfdivert (Linux: cls_bpf programs on the clsact qdisc of
every interface, a ring buffer to user space, WinDivert's own filter
compiler). A diverted packet is taken out of the stack; it goes on only when
we send it back. So a held packet cannot be "accepted later" as with
NFQUEUE: fail-open means re-sending the original bytes with the address
(interface, direction, captured context) they came with.

The filter
    ``outbound and !loopback and !impostor and (ip or ipv6) and
    (tcp.DstPort == 443 ...) and tcp.PayloadLength > 0`` (+ interface terms).
    SYNs and pure ACKs are never diverted; every outbound data segment to the
    ports is, because the second segment of a ClientHello that spans two
    packets does not start like a TLS record and must still reach the engine
    while its flow is being collected. ``hello_only=True`` adds
    ``tcp.Payload[0] == 0x16 and tcp.Payload[1] == 0x03 and tcp.Payload[5] == 0x01``:
    one packet per connection instead of every upload segment, but a hello
    split over two packets then waits for collect-timeout and passes unsplit
    (fail-open, no split). The filter language has no per-flow state (the
    NFQUEUE rules use a conntrack mark for that), so this is a choice, not a
    fix; the default stays correct.

    On Linux only protocol, ports, addresses, TCP flags, direction and
    loopback are evaluated in the kernel. ``tcp.PayloadLength``,
    ``tcp.Payload[i]``, ``ifIdx`` and ``impostor`` are "widened": the kernel
    diverts every outbound TCP packet to the ports (SYNs, ACKs, bulk data)
    into the ring buffer and libebpfdivert evaluates the exact filter in our
    process, re-injecting what does not match. Python only sees the matching
    packets, but the kernel-to-user-space round trip is paid per packet.
    On Windows the driver evaluates the whole filter in the kernel.

Loop avoidance
    WinDivert's rule: a packet injected by a handle is not diverted again by
    that handle or by handles of higher priority; handles of lower priority
    see it with the Impostor flag. libebpfdivert does the same with an skb
    mark (``0x4D490000 | tc_priority``). We drop impostors from the filter:
    govpass reshapes only what the local stack sends, never packets that
    another diverting program injected (WinDivert's warning: impostors are
    how infinite loops happen).

Queue
    ``queue-len`` (packets), ``queue-time`` (ms) and ``queue-size`` (bytes)
    are WinDivert's QUEUE_LENGTH/QUEUE_TIME/QUEUE_SIZE, set on the handle
    after it opens. Their accepted ranges are WinDivert 2.2's, enforced the
    same by libebpfdivert.
"""

from __future__ import annotations

import ctypes
import errno
import importlib.util
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from govpass import host_os
from govpass._core import ACCEPT, DROP, RELEASE, SEND, Engine
from govpass.config import Config
from govpass.errors import BackendError, ConfigError
from govpass.privileges import is_admin

# govpass depends on pydivert on Windows; on Linux it is optional (the eBPF port).
PYDIVERT_HINT = (
    "pip install pydivert; govpass depends on it on Windows"
    if host_os.is_windows()
    else "pip install pydivert, for the eBPF divert backend"
)

# WinDivert 2.2 parameter limits (libebpfdivert enforces the same ones).
QUEUE_LIMITS: dict[str, tuple[int, int]] = {
    "queue-len": (32, 16384),
    "queue-time": (100, 16000),
    "queue-size": (65535, 33554432),
}
# 0 is WinDivert's middle priority; libebpfdivert maps it to "after every
# handle that is already open" (TC priority 30001 upwards).
PRIORITY = 0
RECV_BUFSIZE = 65575  # the largest IP packet plus slack (pydivert's default)
RECV_BATCH = 64
HELLO_PREFIX = "tcp.Payload[0] == 0x16 and tcp.Payload[1] == 0x03 and tcp.Payload[5] == 0x01"
# Replies that decide a watched flow's verdict (--strategy auto), as the NFQUEUE rules
# queue them: a reset, or the start of a TLS record (e.g. the ServerHello).
REPLY_VERDICT = (
    "(tcp.Rst or (tcp.PayloadLength > 0 and tcp.Payload[0] == 0x16 and tcp.Payload[1] == 0x03))"
)

CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 12, 13, 21, 38, 39
BPF_CAPS = (("CAP_BPF", CAP_BPF), ("CAP_PERFMON", CAP_PERFMON))
LINUX_CAPS = (("CAP_NET_ADMIN", CAP_NET_ADMIN), ("CAP_NET_RAW", CAP_NET_RAW))
SHUTDOWN_RECV = 1
# errnos / Windows error codes that mean "the handle was shut down or closed".
_CLOSED_ERRNOS = {errno.EBADF, errno.ESHUTDOWN}
_WIN_NO_DATA, _WIN_INVALID_HANDLE, _WIN_OPERATION_ABORTED = 232, 6, 995
# WinDivertOpen() failures (WinDivert 2.2 documentation) -> one line each.
WINDOWS_OPEN_ERRORS = {
    2: "the WinDivert driver file (WinDivert64.sys) was not found next to WinDivert.dll",
    5: "access denied: govpass must run as Administrator to load the WinDivert driver",
    87: "WinDivert rejected the filter, layer, priority or flags (invalid parameter)",
    577: "Windows refused the WinDivert driver's signature (Secure Boot / driver signing)",
    654: "an incompatible WinDivert driver version is already loaded; stop the other "
    "WinDivert program (sc stop WinDivert) or reboot",
    1060: "the WinDivert driver service is not installed",
    # WinDivert.dll's start-up opens the driver; seen where no driver can load (wine).
    1114: "WinDivert.dll failed to initialise: the WinDivert driver could not be loaded "
    "(a real Windows with its Base Filtering Engine is needed)",
    1275: "the WinDivert driver was blocked (antivirus, HVCI or a virtual machine policy)",
    1753: "the Base Filtering Engine service is not running (WinDivert needs it)",
}


# ------------------------------------------------------------------------- filter


@dataclass(frozen=True)
class FilterSpec:
    """What the filter selects; pure data, turned into text by :func:`build_filter`."""

    ports: tuple[int, ...] = (443,)
    ipv6: bool = True
    include_ifidx: tuple[int, ...] = ()
    exclude_ifidx: tuple[int, ...] = ()
    hello_only: bool = False
    # Also the replies from the ports that tell a watched flow worked or failed.
    replies: bool = False


def _any_of(field: str, values: Iterable[int]) -> str:
    terms = [f"{field} == {v}" for v in values]
    return terms[0] if len(terms) == 1 else "(" + " or ".join(terms) + ")"


def build_filter(spec: FilterSpec) -> str:
    """The WinDivert filter string for `spec`."""
    if not spec.ports:
        raise ConfigError("invalid ports: empty (accepted: 1..=65535)", field="ports")
    ports = sorted(set(spec.ports))
    family = "(ip or ipv6)" if spec.ipv6 else "ip"
    ifaces = []
    if spec.include_ifidx:
        ifaces.append(_any_of("ifIdx", sorted(set(spec.include_ifidx))))
    ifaces += [f"ifIdx != {i}" for i in sorted(set(spec.exclude_ifidx))]
    parts = ["outbound", "!loopback", "!impostor", family, _any_of("tcp.DstPort", ports)]
    parts.append("tcp.PayloadLength > 0")
    if spec.hello_only:
        parts.append(HELLO_PREFIX)
    sent = " and ".join(parts + ifaces)
    if not spec.replies:
        return sent
    # Every reply from the ports costs a trip to user space on Linux (the payload
    # terms are widened): only asked for when a verdict is needed.
    back = ["inbound", "!loopback", "!impostor", family, _any_of("tcp.SrcPort", ports)]
    back.append(REPLY_VERDICT)
    return f"({sent}) or ({' and '.join(back + ifaces)})"


def interface_indexes(
    names: Sequence[str], setting: str, lookup: Callable[[str], int] = socket.if_nametoindex
) -> tuple[int, ...]:
    """Interface names -> indexes; an unknown name is a ConfigError naming `setting`."""
    out = []
    for name in names:
        try:
            out.append(lookup(name))
        except OSError:
            raise ConfigError(
                f"invalid {setting}: no interface named {name!r} on this machine "
                "(accepted: names from socket.if_nameindex(): 'ip link' names on Linux)",
                field=setting,
            ) from None
    return tuple(out)


def detected_tunnel_indexes(
    config: Config, detection: Any = None, lookup: Callable[[str], int] = socket.if_nametoindex
) -> tuple[int, ...]:
    """Indexes of the tunnel/VPN interfaces detected here that the filter skips by
    default (unless named in --iface); see govpass.interfaces."""
    from govpass import interfaces

    det = detection if detection is not None else interfaces.detect()
    out = []
    for i in det.interfaces:
        if i.kind != "tunnel" or i.name in config.iface:
            continue
        try:
            out.append(i.index or lookup(i.name))
        except OSError:
            continue  # gone meanwhile
    return tuple(out)


def filter_spec(config: Config, hello_only: bool = False, detection: Any = None) -> FilterSpec:
    if config.mode != "host":
        raise ConfigError(
            "backend divert supports host mode only (accepted here: --mode host)", field="mode"
        )
    excluded = interface_indexes(config.exclude_iface, "exclude-iface")
    return FilterSpec(
        ports=config.port_numbers,
        ipv6=config.ipv6,
        include_ifidx=interface_indexes(config.iface, "iface"),
        exclude_ifidx=excluded + detected_tunnel_indexes(config, detection),
        hello_only=hello_only,
        replies=learns_here(config),
    )


def learns_here(config: Config) -> bool:
    """`--strategy auto` without host lists, IP sets or profiles: the divert backend
    learns a strategy per host (with lists, auto profiles keep their configured split)."""
    from govpass.targeting import Targeting

    return config.strategy == "auto" and not Targeting.from_config(config).active


def attach_interfaces(config: Config) -> list[str] | None:
    """Linux only: the interfaces libebpfdivert attaches to (None: all of them).

    With --iface or --exclude-iface the programs are not even attached where
    nothing can match, so packets there never make the trip to user space.
    """
    if not config.iface and not config.exclude_iface:
        return None
    names = list(config.iface) or [n for _, n in socket.if_nameindex() if n != "lo"]
    return [n for n in names if n not in config.exclude_iface]


# ------------------------------------------------------------------------- queue


def queue_params(config: Config) -> dict[str, int]:
    """queue-len/-time/-size, checked against WinDivert's limits."""
    values = {
        "queue-len": config.queue_len,
        "queue-time": config.queue_time,
        "queue-size": config.queue_size,
    }
    for name, value in values.items():
        lo, hi = QUEUE_LIMITS[name]
        if not lo <= value <= hi:
            raise ConfigError(
                f"invalid {name} for backend divert: {value} "
                f"(accepted: an integer in {lo}..={hi}, WinDivert's limits)",
                field=name,
            )
    return values


def apply_queue_params(handle: Any, values: dict[str, int]) -> dict[str, int]:
    """Sets the queue parameters on an open handle; returns what it reports back."""
    from pydivert import Param

    params = {"queue-len": Param.QUEUE_LEN, "queue-time": Param.QUEUE_TIME}
    params["queue-size"] = Param.QUEUE_SIZE
    read_back: dict[str, int] = {}
    for name, value in values.items():
        try:
            handle.set_param(params[name], value)
            read_back[name] = int(handle.get_param(params[name]))
        except (OSError, RuntimeError) as e:
            raise BackendError(f"the divert handle refused {name}={value}: {e}") from e
        if read_back[name] != value:
            raise BackendError(
                f"the divert handle kept {name}={read_back[name]} after setting {value}"
            )
    return read_back


# ------------------------------------------------------------------ availability


def _missing_linux_capabilities() -> list[str]:
    """Capabilities libebpfdivert needs that this process lacks; read from CapEff
    even for uid 0 (root in a container often lacks some). Measured: CAP_BPF,
    CAP_NET_ADMIN and CAP_NET_RAW alone get EACCES from the verifier; with
    CAP_PERFMON added the handle opens. CAP_SYS_ADMIN stands in for both."""
    from govpass.privileges import effective_capabilities

    caps = effective_capabilities() or 0
    admin = caps >> CAP_SYS_ADMIN & 1
    missing = [n for n, bit in BPF_CAPS if not (caps >> bit & 1 or admin)]
    return missing + [n for n, bit in LINUX_CAPS if not caps >> bit & 1]


def _libebpfdivert() -> Any:
    from pydivert.bpf import libebpfdivert

    return libebpfdivert


def unavailable_reason() -> str | None:
    """None when the divert backend can run here, else one line saying why not.

    Checks only what can be known without opening a handle (no system change):
    pydivert, the native part (libebpfdivert / the WinDivert DLL and driver
    files), the kernel's BTF (Linux), privileges.
    """
    if importlib.util.find_spec("pydivert") is None:
        return f"Python package pydivert is missing ({PYDIVERT_HINT})"
    if host_os.is_linux():
        if _libebpfdivert() is None:
            return (
                "libebpfdivert cannot be loaded (reinstall pydivert, or point "
                "PYDIVERT_EBPFDIVERT_LIB at the library)"
            )
        if not os.path.exists("/sys/kernel/btf/vmlinux"):
            return "the kernel has no BTF (/sys/kernel/btf/vmlinux); libebpfdivert needs it"
        missing = _missing_linux_capabilities()
        if missing:
            return (
                "needs root or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_NET_RAW "
                f"(missing {', '.join(missing)})"
            )
        return None
    if host_os.is_windows():
        import pydivert.windivert_dll as wd

        folder = os.path.dirname(wd.DLL_PATH)
        for name in ("WinDivert64.dll", "WinDivert64.sys"):
            if not os.path.exists(os.path.join(folder, name)):
                return f"{name} is missing from {folder} (reinstall pydivert)"
        if not is_admin():
            return "needs Administrator rights (the WinDivert driver loads only for admins)"
        return None
    return f"divert works only on Windows and Linux, not {host_os.platform_text()}"


def implementation() -> str:
    """Which divert implementation pydivert uses here, with its version."""
    if host_os.is_linux():
        lib = _libebpfdivert()
        version = lib.ebpfdivert_version().decode() if lib is not None else "not loadable"
        return f"eBPFDivert {version} (libebpfdivert, cls_bpf on clsact)"
    if host_os.is_windows():
        return "WinDivert driver (bundled with pydivert)"
    return "none"


def describe(config: Config | None = None) -> dict[str, Any]:
    """What `govpass doctor` shows about the divert backend; opens nothing.

    Keys: backend, usable, reason, pydivert, implementation, filter, priority,
    workers, queue_len, queue_time_ms, queue_size (or filter_error).
    """
    config = config or Config()
    out: dict[str, Any] = {"backend": "divert"}
    reason = unavailable_reason()
    out["usable"] = reason is None
    out["reason"] = reason
    try:
        from importlib.metadata import version

        out["pydivert"] = version("pydivert")
    except Exception:  # not installed, or no metadata
        out["pydivert"] = None
    try:
        out["implementation"] = implementation() if out["pydivert"] else "none"
    except Exception as e:
        out["implementation"] = f"unknown ({type(e).__name__}: {e})"
    try:
        out["filter"] = build_filter(filter_spec(config))
    except ConfigError as e:
        out["filter_error"] = str(e)
    out["priority"] = PRIORITY
    out["workers"] = 1
    out["queue_len"] = config.queue_len
    out["queue_time_ms"] = config.queue_time
    out["queue_size"] = config.queue_size
    return out


def check_privileges() -> None:
    """Fail fast, with one line, when this process cannot load the divert programs."""
    if host_os.is_linux():
        missing = _missing_linux_capabilities()
        if missing:
            raise BackendError(
                "govpass run --backend divert needs root or CAP_BPF, CAP_PERFMON, "
                f"CAP_NET_ADMIN and CAP_NET_RAW (missing {', '.join(missing)})"
            )
    elif host_os.is_windows() and not is_admin():
        raise BackendError(
            "govpass run --backend divert needs Administrator rights "
            "(right-click > Run as administrator, or install the service)"
        )


def open_error(e: BaseException) -> BackendError:
    """Turns a failure of Divert.open() into one clear line."""
    winerror = getattr(e, "winerror", None)
    if winerror in WINDOWS_OPEN_ERRORS:
        return BackendError(f"cannot open WinDivert: {WINDOWS_OPEN_ERRORS[winerror]}")
    if isinstance(e, ImportError):
        return BackendError(f"cannot load libebpfdivert: {e}")
    if isinstance(e, NotImplementedError):
        return BackendError(f"divert is not supported here: {e}")
    code = getattr(e, "errno", None)
    if code in (errno.EPERM, errno.EACCES):
        return BackendError(
            f"libebpfdivert could not load its eBPF programs: {e} "
            "(needs root or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN + CAP_NET_RAW)"
        )
    if code == errno.EINVAL and "filter" in str(e):
        return BackendError(f"the divert filter was rejected: {e}")
    if isinstance(e, OSError) and host_os.is_windows():
        return BackendError(f"WinDivert could not start: {e}")
    if isinstance(e, OSError):
        return BackendError(
            f"libebpfdivert could not start: {e} "
            "(Linux: kernel 5.10+ with BTF, clsact and cls_bpf are needed)"
        )
    return BackendError(f"cannot open the divert handle: {type(e).__name__}: {e}")


# ------------------------------------------------------------------------ worker


def _targeting(config: Config) -> Any:
    """The profiles of the configuration (host lists, IP sets), or None without any.

    Auto-learning is refused: it judges flows by inbound RSTs and data, which the
    outbound-only divert filter never captures."""
    from govpass.targeting import Targeting

    targeting = Targeting.from_config(config)
    if targeting.auto:
        raise ConfigError(
            "hostlist-auto is not supported by backend divert (auto-learning needs "
            "inbound packets the divert filter does not capture; accepted: static "
            "host lists and IP sets)",
            field="hostlist-auto",
        )
    return targeting if targeting.active else None


def _default_factory(filter_text: str, interfaces: list[str] | None) -> Any:
    import pydivert

    kwargs: dict[str, Any] = {}
    if interfaces is not None and host_os.is_linux():
        kwargs["interfaces"] = interfaces
    return pydivert.Divert(filter_text, priority=PRIORITY, **kwargs)


def _is_closed_error(e: OSError) -> bool:
    return e.errno in _CLOSED_ERRNOS or getattr(e, "winerror", None) in (
        _WIN_NO_DATA,
        _WIN_INVALID_HANDLE,
        _WIN_OPERATION_ABORTED,
    )


class DivertWorker:
    """One handle, one engine. A receive thread feeds the engine; `expire` is
    called from a timer (by :meth:`run`); one lock keeps the two apart and
    keeps each flow's packets in order on the way out.

    WinDivert cannot spread one filter's flows over several handles by flow
    hash (NFQUEUE's --queue-balance), so the divert backend runs one worker.
    """

    def __init__(
        self,
        config: Config,
        *,
        hello_only: bool = False,
        factory: Callable[[str, list[str] | None], Any] | None = None,
    ) -> None:
        spec = filter_spec(config, hello_only)
        self.filter = build_filter(spec)
        # Replies reach the engine only for --strategy auto (its verdicts).
        self._reply_ports = frozenset(spec.ports) if spec.replies else frozenset()
        self.queue = queue_params(config)
        self.interfaces = attach_interfaces(config) if host_os.is_linux() else None
        self.engine = Engine(config.engine_config())
        self.watcher: Any = None
        self._targeting = _targeting(config)
        if self._targeting is not None:
            self.engine.set_profiles(self._targeting.build())  # a bad list: one line, no start
        tick_ms = min(max(config.collect_timeout / 5, 5.0), 50.0)
        self.tick = tick_ms / 1000.0
        self._factory = factory or _default_factory
        self.handle: Any = None
        self.queue_applied: dict[str, int] = {}
        self.lock = threading.Lock()
        self.counters = {
            "inject_sent": 0,
            "inject_errors": 0,
            "callback_errors": 0,
            "fail_open_resent": 0,
            "impostors_passed": 0,
            "recv_batches": 0,
        }
        self.error: str | None = None
        self._batched_recv = host_os.is_linux()

    # -- lifecycle -----------------------------------------------------------------

    def watch_lists(self, log: Callable[[str], None] | None) -> str | None:
        """Keeps the profiles in step with their list files (polled by the timer);
        returns the profiles' summary, None without profiles."""
        if self._targeting is None:
            return None
        from govpass.targeting import ListWatcher

        def apply(profiles: list[Any]) -> None:
            with self.lock:
                self.engine.set_profiles(profiles)

        self.watcher = ListWatcher(self._targeting, apply, log)
        return str(self._targeting.summary)

    def request_reload(self) -> None:
        """Re-read every list at the next timer tick (SIGHUP); signal-safe."""
        if self.watcher is not None:
            self.watcher.request()

    def open(self) -> None:
        """Opens the handle and sets the queue; one-line BackendError on failure."""
        handle = self._factory(self.filter, self.interfaces)
        try:
            handle.open()
        except Exception as e:
            raise open_error(e) from e
        try:
            self.queue_applied = apply_queue_params(handle, self.queue)
        except BaseException:
            handle.close()
            raise
        self.handle = handle

    def shutdown_recv(self) -> None:
        """Stops capturing (queued packets can still be received), if the API allows."""
        h = self.handle
        if h is None:
            return
        try:
            if hasattr(h, "shutdown"):  # pydivert's Linux backend
                h.shutdown(SHUTDOWN_RECV)
            elif host_os.is_windows():
                from pydivert import windivert_dll

                windivert_dll.WinDivertShutdown(h._impl._handle, SHUTDOWN_RECV)
        except Exception:
            pass  # close() follows and stops the capture anyway

    def close(self) -> None:
        """Releases every held packet (re-sent unchanged), then closes the handle."""
        try:
            with self.lock:
                self.apply(self.engine.release_all())
        finally:
            h, self.handle = self.handle, None
            if h is not None and h.is_open:
                h.close()

    # -- packets -------------------------------------------------------------------

    def _send(self, packets: list[Any]) -> bool:
        """Sends in order; True when every packet went out."""
        if not packets:
            return True
        try:
            sent = int(self.handle.send_batch(packets, recalculate_checksum=False))
        except (OSError, RuntimeError):
            sent = 0
        self.counters["inject_sent"] += sent
        self.counters["inject_errors"] += len(packets) - sent
        return sent == len(packets)

    @staticmethod
    def _segment(data: bytes, template: Any) -> Any:
        """A generated segment carrying the original's address (interface, direction,
        captured link-layer context), flagged as having valid checksums: the engine
        computed them, so neither the driver nor libebpfdivert touches the bytes."""
        from pydivert import Packet
        from pydivert.windivert_dll import WinDivertAddress

        if template is None:
            pkt = Packet(data)
        else:
            addr = WinDivertAddress()
            ctypes.memmove(ctypes.byref(addr), ctypes.byref(template.wd_addr), ctypes.sizeof(addr))
            pkt = Packet(data, wd_addr=addr)
        pkt.wd_addr.IPChecksum = 1
        pkt.wd_addr.TCPChecksum = 1
        return pkt

    def apply(self, actions: list[Any], current: Any = None) -> None:
        """Carries out engine actions in order (lock held by the caller).

        SEND segments take their address from the original they replace. If any
        segment cannot be injected, the originals it replaced are re-sent instead
        of dropped: same bytes, so the receiver just sees overlapping data.
        """
        if not actions:
            return
        template = next((a.handle for a in actions if a.kind == DROP), current)
        out: list[Any] = []
        dropped: list[Any] = []
        for a in actions:
            kind = a.kind
            if kind == SEND:
                out.append(self._segment(a.packet, template))
            elif kind in (RELEASE, ACCEPT):
                out.append(a.handle)
            elif kind == DROP:
                dropped.append(a.handle)
        if not self._send(out) and dropped and self._send(dropped):
            self.counters["fail_open_resent"] += len(dropped)

    def process(self, packets: list[Any]) -> None:
        """Runs one received batch through the engine and sends what it says."""
        with self.lock:
            passing: list[Any] = []
            for pkt in packets:
                if pkt.is_impostor or not (pkt.is_outbound or self._is_reply(pkt)):
                    self.counters["impostors_passed"] += 1
                    passing.append(pkt)
                    continue
                try:
                    # The interface index: for profiles limited to some interfaces.
                    ifidx = pkt.interface[0]
                    result = self.engine.process(pkt.raw.tobytes(), time.monotonic(), pkt, ifidx)
                except Exception:
                    self.counters["callback_errors"] += 1
                    passing.append(pkt)  # never lose a packet: it goes on unchanged
                    continue
                if result is None:
                    passing.append(pkt)
                elif result:
                    self._send(passing)  # keep each flow's order on the wire
                    passing = []
                    self.apply(result, pkt)
            self._send(passing)

    def _is_reply(self, pkt: Any) -> bool:
        ports = self._reply_ports
        return pkt.src_port in ports and pkt.dst_port not in ports

    def expire(self) -> None:
        if self.watcher is not None:
            self.watcher.poll()
        with self.lock:
            self.apply(self.engine.expire(time.monotonic()))

    def receive_once(self, timeout: float | None) -> bool:
        """Receives and processes one batch; False once the handle is shut down."""
        try:
            if self._batched_recv:
                packets = self.handle.recv_batch(RECV_BATCH, RECV_BUFSIZE, timeout)
            else:
                packets = [self.handle.recv(RECV_BUFSIZE, timeout)]
        except TimeoutError:
            return True
        except OSError as e:
            if _is_closed_error(e):
                return False
            raise
        except RuntimeError:  # "handle is not open"
            return False
        self.counters["recv_batches"] += 1
        self.process(packets)
        return True

    def receive_loop(self) -> None:
        """Thread body: blocking receives until the handle is shut down or closed.

        Blocking (no timeout) on purpose: pydivert's timed receive on Windows
        cancels the pending read on timeout, and a packet completing in that
        window would be lost; the timer lives in another thread instead.
        """
        try:
            while self.handle is not None and self.receive_once(None):
                pass
        except Exception as e:
            self.error = f"receive failed: {type(e).__name__}: {e}"

    def run(
        self, should_stop: Callable[[], bool], on_tick: Callable[[], None] | None = None
    ) -> None:
        """Receives in a thread and fires the engine's timer here until `should_stop()`
        or the receive thread dies; then drains the queue, releases, closes."""
        if self.handle is None:
            self.open()
        receiver = threading.Thread(target=self.receive_loop, name="govpass-divert-recv")
        receiver.daemon = True
        receiver.start()
        try:
            while not should_stop() and receiver.is_alive():
                time.sleep(self.tick)
                self.expire()
                if on_tick is not None:
                    on_tick()
        finally:
            self.shutdown_recv()
            receiver.join(2.0)
            self.close()
            receiver.join(1.0)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            s: dict[str, Any] = dict(self.engine.stats())
        s.update(self.counters)
        if self.watcher is not None:
            s.update(list_reloads=self.watcher.reloads, list_errors=self.watcher.failures)
        h = self.handle
        if h is not None:
            try:
                for key, value in h.stats().items():
                    if not key.startswith("queue_"):
                        s[f"divert_{key}"] = int(value)
            except (OSError, RuntimeError, AttributeError):
                pass
        return s
