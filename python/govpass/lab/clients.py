"""TLS clients run inside a lab namespace; each returns ``(ok, detail)``.

``ok`` means: the TLS handshake (with certificate checks, except for Chromium) succeeded
and an HTTP 200 came back; with the lab's Python server also that the page names the SNI
the client was asked to send. A censored flow shows up as ``ok=False`` with a timeout,
reset or handshake error in ``detail``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from govpass.lab.netns import ns_argv, stop_group

KINDS = ("curl", "openssl", "python", "chromium")


@dataclass(frozen=True)
class Target:
    name: str
    addr: str
    family: int
    cafile: Path
    port: int = 443
    expect_sni: bool = True  # the lab's Python server echoes the SNI; s_server does not

    @property
    def hostport(self) -> str:
        host = f"[{self.addr}]" if self.family == 6 else self.addr
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.name}:{self.port}/"


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def available(kind: str) -> bool:
    if kind == "chromium":
        return chromium_binary() is not None
    if kind == "python":
        return True
    return shutil.which(kind) is not None


# A failed connection is one line on stderr, as curl's and openssl's are, not a traceback.
_PY_CLIENT = r"""
import socket, ssl, sys
name, addr, port, cafile, timeout = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=cafile)
try:
    with socket.create_connection((addr, int(port)), timeout=float(timeout)) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
except OSError as e:
    sys.exit(f"python: {type(e).__name__}: {e}")
sys.stdout.write(data.decode("latin-1"))
"""


def argv_for(kind: str, t: Target, timeout: float, workdir: Path) -> tuple[list[str], str | None]:
    """(argv, stdin text) of one client run."""
    if kind == "curl":
        return [
            "curl",
            "-sS",
            "-i",
            "--max-time",
            f"{timeout:g}",
            "--connect-timeout",
            f"{timeout:g}",
            "--resolve",
            f"{t.name}:{t.port}:{t.hostport.rsplit(':', 1)[0]}",
            "--cacert",
            str(t.cafile),
            "--http1.1",
            t.url,
        ], None
    if kind == "openssl":
        request = f"GET / HTTP/1.1\r\nHost: {t.name}\r\nConnection: close\r\n\r\n"
        return [
            "openssl",
            "s_client",
            "-connect",
            t.hostport,
            "-servername",
            t.name,
            "-CAfile",
            str(t.cafile),
            "-verify_return_error",
            "-verify_hostname",
            t.name,
            "-quiet",
            "-ign_eof",
        ], request
    if kind == "python":
        return [
            sys.executable,
            "-c",
            _PY_CLIENT,
            t.name,
            t.addr,
            str(t.port),
            str(t.cafile),
            f"{timeout:g}",
        ], None
    if kind == "chromium":
        binary = chromium_binary()
        if binary is None:
            raise FileNotFoundError("chromium is not installed")
        host = f"[{t.addr}]" if t.family == 6 else t.addr
        profile = tempfile.mkdtemp(prefix="chromium-", dir=workdir)
        return [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            # Only the lab name resolves; nothing else may leave for a DNS server.
            f"--host-resolver-rules=MAP {t.name} {host}, MAP * ~NOTFOUND",
            "--ignore-certificate-errors",
            f"--timeout={int(timeout * 1000)}",
            "--dump-dom",
            t.url,
        ], None
    raise ValueError(f"unknown client kind {kind!r}; known: {', '.join(KINDS)}")


def judge(kind: str, t: Target, rc: int, out: str, err: str) -> tuple[bool, str]:
    if kind == "chromium":
        # --dump-dom prints the DOM even for an error page; success is our marker.
        m = re.search(r"sni=([^<\s]*)", out)
        if m:
            ok = not t.expect_sni or m.group(1) == t.name
            return ok, f"page sni={m.group(1)}"
        if not t.expect_sni and "<html" in out.lower() and "ERR_" not in out:
            return True, "page loaded"
        errs = sorted(set(re.findall(r"net::ERR_[A-Z_]+|ERR_[A-Z_]+", out + err)))
        if not errs:  # its stderr is a log of unrelated complaints (D-Bus, GPU, ...)
            errs = ["page load timed out" if "Page load timed out" in err else "no page"]
        return False, f"rc={rc} {', '.join(errs)}"
    status = re.search(r"HTTP/1\.[01] (\d{3})", out)
    if status is None or status.group(1) != "200":
        return False, f"rc={rc} {_tail(err) or _tail(out) or 'no response'}"
    m = re.search(r"sni=([^<\s]*)", out)
    seen = m.group(1) if m else None
    if t.expect_sni and seen != t.name:
        return False, f"HTTP 200 but server saw sni={seen}"
    return True, f"HTTP 200 sni={seen}" if seen else "HTTP 200"


def _tail(text: str, limit: int = 300) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-3:])[-limit:]


def run_client(
    kind: str, ns: str, t: Target, timeout: float, workdir: Path, env: dict[str, str] | None = None
) -> tuple[bool, str]:
    """Run one client in namespace ``ns``; the whole process group dies at ``timeout``."""
    argv, stdin = argv_for(kind, t, timeout, workdir)
    full_env = dict(os.environ, HOME=str(workdir))
    if env:
        full_env.update(env)
    started = time.monotonic()
    proc = subprocess.Popen(
        ns_argv(ns, argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        start_new_session=True,
    )
    # Chromium's own --timeout needs a moment to dump the DOM; openssl has no timeout at all.
    slack = 4.0 if kind == "chromium" else 0.5
    try:
        out, err = proc.communicate(stdin, timeout=timeout + slack)
    except subprocess.TimeoutExpired:
        stop_group(proc, 1.0)
        out, err = proc.communicate()
        return False, f"timeout after {time.monotonic() - started:.1f}s ({_tail(err)})"
    finally:
        # Chromium helpers share the group; none may outlive the client run.
        stop_group(proc, 0.5)
    ok, detail = judge(kind, t, proc.returncode, out, err)
    return ok, f"{detail} [{time.monotonic() - started:.1f}s]"


def kinds_available(kinds: Sequence[str] = KINDS) -> list[str]:
    return [k for k in kinds if available(k)]
