"""Bad input through the real CLI: every case is one `python -m govpass run ...`
that must stop at validation with exit 2 and one bounded line naming the
setting and what it accepts; no traceback, no hang.

A case that turned out valid must not start anything: as root each run is in a
network namespace of its own without capabilities (it cannot bind a queue or
touch a rule), and GOVPASS_RUN_DIR points below /dev/null, so a daemon's start
would fail there (and show up here as a traceback).
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from govpass.settings import SETTINGS

TIMEOUT = 60  # seconds per case; the machine may be busy, a hang takes forever
MAX_OUTPUT = 2000  # characters of stderr a case may print
ROOT = os.geteuid() == 0


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]  # after `govpass run`; {d} is the case files' directory
    expect: tuple[str, ...]  # all in the error line
    env: tuple[tuple[str, str], ...] = ()
    code: int = 2
    accepts: tuple[str, ...] = field(default=("accepted",))  # one of them in the line
    # List files are read when the daemon starts: such a case gets a run directory
    # (in the namespace without capabilities, so nothing can bind or install).
    lists: bool = False


def flag(case_id: str, *args: str, expect: tuple[str, ...] = (), **kw: object) -> Case:
    return Case(case_id, args, expect, **kw)  # type: ignore[arg-type]


def lists(case_id: str, *args: str, expect: tuple[str, ...] = ()) -> Case:
    return Case(case_id, args, expect, lists=True)


def conf(case_id: str, name: str, *expect: str) -> Case:
    """A case reading config file `name` (written by `_files`)."""
    path = name if name.startswith("/") else f"{{d}}/{name}"
    return Case(case_id, ("--config", path), expect)


def env(case_id: str, var: str, value: str, *expect: str) -> Case:
    return Case(case_id, (), (var, *expect), env=((var, value),))


INTS = [s for s in SETTINGS if s.kind == "int"]
FLOATS = [s for s in SETTINGS if s.kind == "float"]

# Config files by name; bytes where text cannot say it.
CONFIGS: dict[str, str | bytes] = {
    "inf.toml": "split-chunk = inf\n",
    "neginf.toml": "max-flows = -inf\n",
    "nan.toml": "workers = nan\n",
    "float-int.toml": "max-buffer = 4096.0\n",
    "float-frac.toml": "split-chunk = 2.5\n",
    "bool-int.toml": "queue-num = true\n",
    "array-int.toml": "split-chunk = [5]\n",
    "table-int.toml": "split-chunk = { a = 1 }\n",
    "huge-int.toml": "max-flows = 99999999999999999999999999\n",
    "digits.toml": "max-flows = " + "9" * 5000 + "\n",
    "float-inf.toml": "collect-timeout = inf\n",
    "float-nan.toml": "flow-timeout = nan\n",
    "float-bool.toml": "stats-interval = false\n",
    "choice-array.toml": 'mode = ["host"]\n',
    "choice-int.toml": "backend = 1\n",
    "bool-string.toml": 'ipv6 = "maybe"\n',
    "bool-float.toml": "ipv6 = 0.5\n",
    "str-array.toml": 'pf-anchor = ["a"]\n',
    "str-escape.toml": 'pf-anchor = "a\\u001b]0;x\\u0007"\n',
    "list-table.toml": "hostlist = { a = 1 }\n",
    "list-bools.toml": "ports = [true]\n",
    "list-floats.toml": "ports = [443.0]\n",
    "list-nested.toml": 'hosts = [["a.example"]]\n',
    "ports-zero.toml": "ports = [0]\n",
    "nul-path.toml": 'hostlist = "lists/a\\u0000b.txt"\n',
    "newline-path.toml": 'hostlist-auto = "auto\\n.txt"\n',
    "unknown.toml": "split-chunck = 5\n",
    "unknown-escape.toml": '"x\\u001b[2J" = 5\n',
    "stray.toml": "split-chunk = 5\n[govpass]\nworkers = 1\n",
    "govpass-int.toml": "govpass = 5\n",
    "profile-int.toml": "profile = 5\n",
    "duplicate.toml": "split-chunk = 5\nsplit-chunk = 6\n",
    "duplicate-table.toml": "[govpass]\nworkers = 1\n[govpass]\nworkers = 2\n",
    "not-toml.toml": "split-chunk = \n",
    "latin1.toml": b"# r\xe9glages\nsplit-chunk = 3\n",
    "bad-utf8-value.toml": b'pf-anchor = "\xff\xfe"\n',
    "deep-array.toml": "a = " + "[" * 100000 + "]" * 100000 + "\n",
    "deep-table.toml": "a = " + "{b = " * 50000 + "1" + "}" * 50000 + "\n",
    "deep-value.toml": "split-pos = " + "[" * 500 + "]" * 500 + "\n",
    "p-family-array.toml": '[[profile]]\nname = "a"\nfamily = ["ipv4"]\n',
    "p-family-table.toml": '[[profile]]\nname = "a"\nfamily = { v = 4 }\n',
    "p-family-bad.toml": '[[profile]]\nname = "a"\nfamily = "ipv5"\n',
    "p-name-newline.toml": '[[profile]]\nname = "video\\n"\n',
    "p-name-space.toml": '[[profile]]\nname = "a b"\n',
    "p-name-int.toml": "[[profile]]\nname = 5\n",
    "p-name-long.toml": '[[profile]]\nname = "' + "a" * 100000 + '"\n',
    "p-action-array.toml": '[[profile]]\nname = "a"\naction = ["split"]\n',
    "p-action-table.toml": '[[profile]]\nname = "a"\naction = { x = 1 }\n',
    "p-hostlist-table.toml": '[[profile]]\nname = "a"\nhostlist = { x = 1 }\n',
    "p-hosts-ints.toml": '[[profile]]\nname = "a"\nhosts = [1, 2]\n',
    "p-ports-table.toml": '[[profile]]\nname = "a"\nports = { x = 1 }\n',
    "p-ports-float.toml": '[[profile]]\nname = "a"\nports = [443.5]\n',
    "p-iface-int.toml": '[[profile]]\nname = "a"\niface = 5\n',
    "p-auto-int.toml": '[[profile]]\nname = "a"\nauto = 5\n',
    "p-unknown.toml": '[[profile]]\nname = "a"\nhostlists = "x"\n',
    "p-subtable.toml": '[[profile]]\nname = "a"\n[profile.extra]\nx = 1\n',
    "p-chunk-inf.toml": '[[profile]]\nname = "a"\nsplit-chunk = inf\n',
    "p-chunk-bool.toml": '[[profile]]\nname = "a"\nsplit-chunk = true\n',
    "p-pos-wrap.toml": '[[profile]]\nname = "a"\nsplit-pos = "sni--2147483648"\n',
    "p-twice.toml": '[[profile]]\nname = "a"\n[[profile]]\nname = "a"\n',
    "p-nul-path.toml": '[[profile]]\nname = "a"\nhostlist = "x\\u0000y"\n',
    "p-nouser.toml": '[[profile]]\nname = "a"\nipset = "~nosuchuser-govpass/ips.txt"\n',
    "p-strategy-word.toml": '[[profile]]\nname = "a"\nstrategy = "adaptive"\n',
    "p-strategy-array.toml": '[[profile]]\nname = "a"\nstrategy = ["auto"]\n',
    "p-strategy-pass.toml": '[[profile]]\nname = "a"\naction = "pass"\nstrategy = "auto"\n',
    "p-strategy-autolist.toml": '[[profile]]\nname = "a"\nstrategy = "auto"\nauto = "l.txt"\n',
    "p-strategy-inherited.toml": 'strategy = "auto"\n[[profile]]\nname = "a"\nauto = "l.txt"\n',
}

CASES: list[Case] = [
    # Every integer setting: below its range and far above it.
    *(
        flag(f"{s.name}-negative", f"--{s.name}", str(int(s.minimum or 0) - 1), expect=(s.name,))
        for s in INTS
    ),
    *(flag(f"{s.name}-huge", f"--{s.name}", "9" * 30, expect=(s.name,)) for s in INTS),
    *(flag(f"{s.name}-nan", f"--{s.name}", "nan", expect=(s.name,)) for s in FLOATS),
    *(flag(f"{s.name}-negative", f"--{s.name}", "-1", expect=(s.name,)) for s in FLOATS),
    *(flag(f"{s.name}-inf", f"--{s.name}", "inf", expect=(s.name,)) for s in FLOATS),
    # Config file values of the wrong type.
    conf("toml-inf-int", "inf.toml", "split-chunk in", "inf", "an integer"),
    conf("toml-neginf-int", "neginf.toml", "max-flows", "-inf"),
    conf("toml-nan-int", "nan.toml", "workers", "nan"),
    conf("toml-float-for-int", "float-int.toml", "max-buffer", "4096.0"),
    conf("toml-fraction-for-int", "float-frac.toml", "split-chunk", "2.5"),
    conf("toml-bool-for-int", "bool-int.toml", "queue-num", "True"),
    conf("toml-array-for-int", "array-int.toml", "split-chunk", "[5]"),
    conf("toml-table-for-int", "table-int.toml", "split-chunk", "{'a': 1}"),
    conf("toml-huge-int", "huge-int.toml", "max-flows"),
    conf("toml-5000-digits", "digits.toml", "not valid TOML"),
    conf("toml-inf-float", "float-inf.toml", "collect-timeout", "inf"),
    conf("toml-nan-float", "float-nan.toml", "flow-timeout", "nan"),
    conf("toml-bool-for-float", "float-bool.toml", "stats-interval"),
    conf("toml-array-for-choice", "choice-array.toml", "mode", "host, router"),
    conf("toml-int-for-choice", "choice-int.toml", "backend", "nfqueue, divert"),
    conf("toml-string-for-bool", "bool-string.toml", "ipv6", "true or false"),
    conf("toml-float-for-bool", "bool-float.toml", "ipv6"),
    conf("toml-array-for-string", "str-array.toml", "pf-anchor"),
    conf("toml-escape-in-string", "str-escape.toml", "pf-anchor", "\\x1b", "control"),
    conf("toml-table-for-list", "list-table.toml", "hostlist"),
    conf("toml-bools-in-list", "list-bools.toml", "ports"),
    conf("toml-floats-in-list", "list-floats.toml", "ports"),
    conf("toml-nested-list", "list-nested.toml", "hosts"),
    conf("toml-port-zero", "ports-zero.toml", "ports", "1..=65535"),
    conf("toml-nul-in-path", "nul-path.toml", "hostlist", "\\x00"),
    conf("toml-newline-in-path", "newline-path.toml", "hostlist-auto", "\\x0a"),
    conf("toml-unknown-key", "unknown.toml", "split-chunck", "split-chunk"),
    conf("toml-unknown-key-escaped", "unknown-escape.toml", "\\x1b[2J"),
    conf("toml-key-beside-govpass-table", "stray.toml", "split-chunk", "[govpass]"),
    conf("toml-govpass-not-a-table", "govpass-int.toml", "govpass", "table"),
    conf("toml-profile-not-tables", "profile-int.toml", "profile", "[[profile]]"),
    conf("toml-duplicate-key", "duplicate.toml", "not valid TOML", "'split-chunk = 6'"),
    conf("toml-duplicate-table", "duplicate-table.toml", "not valid TOML"),
    conf("toml-syntax", "not-toml.toml", "not valid TOML"),
    conf("toml-not-utf8", "latin1.toml", "not UTF-8", "line 1"),
    conf("toml-not-utf8-value", "bad-utf8-value.toml", "not UTF-8"),
    conf("toml-deep-arrays", "deep-array.toml", "nested too deeply"),
    conf("toml-deep-tables", "deep-table.toml", "nested too deeply"),
    conf("toml-nested-value", "deep-value.toml", "nested too deeply"),
    # [[profile]] tables.
    conf("profile-family-array", "p-family-array.toml", "family", "any, ipv4, ipv6"),
    conf("profile-family-table", "p-family-table.toml", "family", "any, ipv4, ipv6"),
    conf("profile-family-unknown", "p-family-bad.toml", "family", "'ipv5'"),
    conf("profile-name-newline", "p-name-newline.toml", "name", "'video\\x0a'"),
    conf("profile-name-space", "p-name-space.toml", "name", "'a b'"),
    conf("profile-name-int", "p-name-int.toml", "name"),
    conf("profile-name-100k", "p-name-long.toml", "name", "(100000 characters)"),
    conf("profile-action-array", "p-action-array.toml", "action", "split, pass"),
    conf("profile-action-table", "p-action-table.toml", "action", "split, pass"),
    conf("profile-hostlist-table", "p-hostlist-table.toml", "hostlist", "a table"),
    conf("profile-hosts-ints", "p-hosts-ints.toml", "hosts", "an array"),
    conf("profile-ports-table", "p-ports-table.toml", "ports"),
    conf("profile-ports-float", "p-ports-float.toml", "ports"),
    conf("profile-iface-int", "p-iface-int.toml", "iface"),
    conf("profile-auto-int", "p-auto-int.toml", "auto"),
    conf("profile-unknown-key", "p-unknown.toml", "hostlists", "hostlist"),
    conf("profile-subtable", "p-subtable.toml", "extra"),
    conf("profile-chunk-inf", "p-chunk-inf.toml", "split-chunk", "inf"),
    conf("profile-chunk-bool", "p-chunk-bool.toml", "split-chunk"),
    conf("profile-pos-wraps", "p-pos-wrap.toml", "split-pos", "sni--2147483648"),
    conf("profile-name-twice", "p-twice.toml", "'a'", "twice"),
    conf("profile-nul-in-path", "p-nul-path.toml", "hostlist", "NUL"),
    conf("profile-no-such-user", "p-nouser.toml", "ipset", "nosuchuser-govpass"),
    conf("profile-strategy-word", "p-strategy-word.toml", "strategy", "'adaptive'", "fixed, auto"),
    conf("profile-strategy-array", "p-strategy-array.toml", "strategy", "fixed, auto"),
    conf("profile-strategy-pass", "p-strategy-pass.toml", "strategy = auto", "action = split"),
    conf("profile-strategy-autolist", "p-strategy-autolist.toml", "auto", "strategy = auto"),
    conf("profile-strategy-inherited", "p-strategy-inherited.toml", "global strategy setting"),
    flag(
        "strategy-auto-with-hostlist-auto",
        *("--strategy", "auto", "--hostlist-auto", "{d}/learned.txt"),
        expect=("strategy auto", "hostlist-auto"),
    ),
    # The config file itself.
    conf("config-directory", "a-directory", "config file", "a directory", "regular file"),
    conf("config-unreadable", "unreadable.toml", "config file", "Permission denied"),
    conf("config-fifo", "fifo.toml", "config file", "a FIFO"),
    conf("config-missing", "absent.toml", "config file", "no such file"),
    conf("config-oversize", "huge.toml", "config file", "larger than 16 MiB"),
    conf("config-dev-zero", "/dev/zero", "config file", "a device"),
    # Environment variables name themselves.
    env("env-chunk-word", "GOVPASS_SPLIT_CHUNK", "abc", "split-chunk", "an integer"),
    env("env-workers-negative", "GOVPASS_WORKERS", "-1", "0..=256"),
    env("env-queue-num-huge", "GOVPASS_QUEUE_NUM", "9" * 40, "0..=65535"),
    env("env-max-flows-float", "GOVPASS_MAX_FLOWS", "1e3", "max-flows"),
    env("env-ipv6-word", "GOVPASS_IPV6", "maybe", "true or false"),
    env("env-mode-unknown", "GOVPASS_MODE", "bridge", "host, router"),
    env("env-ports-name", "GOVPASS_PORTS", "https", "ports"),
    env("env-timeout-nan", "GOVPASS_COLLECT_TIMEOUT", "nan", "collect-timeout"),
    env("env-split-pos-double-sign", "GOVPASS_SPLIT_POS", "sni--5", "sni--5"),
    env("env-anchor-escape", "GOVPASS_PF_ANCHOR", "a\x1b[31mb", "\\x1b", "control"),
    env("env-max-list-bytes-small", "GOVPASS_MAX_LIST_BYTES", "10", "max-list-bytes"),
    # Split positions the engine used to misread.
    flag("pos-double-minus", "--split-pos", "sni--5", expect=("split-pos", '"sni--5"')),
    flag("pos-wraps", "--split-pos", "sni--2147483648", expect=("split-pos",)),
    flag("pos-over-i32", "--split-pos", "sni+2147483648", expect=("split-pos",)),
    flag("pos-huge", "--split-pos", "sniend-99999999999", expect=("split-pos",)),
    flag("pos-plus-plus", "--split-pos", "midsld++1", expect=("split-pos",)),
    flag("pos-plus-minus", "--split-pos", "sni+-1", expect=("split-pos",)),
    flag("pos-signed-absolute", "--split-pos", "+5", expect=("split-pos",)),
    flag("pos-zero", "--split-pos", "0", expect=("split-pos",)),
    flag("pos-unknown", "--split-pos", "sni,foo", expect=("split-pos", "foo")),
    # Other flags.
    flag("ports-zero", "--ports", "0", expect=("ports", "1..=65535")),
    flag("ports-over", "--ports", "65536", expect=("ports",)),
    flag("ports-name", "--ports", "https", expect=("ports",)),
    flag("ports-negative", "--ports", "-443", expect=("ports",)),
    flag("mode-unknown", "--mode", "bridge", expect=("mode", "host, router")),
    flag("firewall-unknown", "--firewall", "pf", expect=("firewall", "nftables")),
    flag("split-mode-empty", "--split-mode", "", expect=("split-mode", "tls-hello")),
    flag("chunk-hex-garbage", "--split-chunk", "0xZZ", expect=("split-chunk",)),
    flag("chunk-10mb", "--split-chunk", "7" * 100_000, expect=("split-chunk",)),
    flag("iface-escape", "--iface", "eth0\x1b]0;pwned\x07", expect=("iface", "\\x1b")),
    flag("hostlist-escape", "--hostlist", "a\x1b[2J.txt", expect=("hostlist", "control")),
    flag("unknown-flag", "--split-chunck", "5", expect=("--split-chunck",), accepts=("--help",)),
    flag("flag-missing-value", "--split-chunk", expect=("--split-chunk",), accepts=("argument",)),
    # List files.
    lists(
        "hostlist-no-such-user",
        "--hostlist",
        "~nosuchuser-govpass/list.txt",
        expect=("hostlist", "nosuchuser-govpass"),
    ),
    lists("hostlist-fifo", "--hostlist", "{d}/fifo.txt", expect=("hostlist", "a FIFO")),
    lists("ipset-fifo", "--ipset", "{d}/fifo.txt", expect=("ipset", "a FIFO")),
    lists("auto-fifo", "--hostlist-auto", "{d}/fifo.txt", expect=("hostlist-auto", "a FIFO")),
    lists("hostlist-directory", "--hostlist", "{d}/a-directory", expect=("hostlist", "directory")),
    lists("auto-directory", "--hostlist-auto", "{d}/a-directory", expect=("hostlist-auto",)),
    lists("hostlist-missing", "--hostlist", "{d}/absent.txt", expect=("hostlist", "no such file")),
    lists(
        "hostlist-unreadable",
        "--hostlist",
        "{d}/unreadable.toml",
        expect=("hostlist", "Permission denied"),
    ),
    lists("hostlist-dev-zero", "--hostlist", "/dev/zero", expect=("hostlist", "a device")),
    lists(
        "hostlist-gzip-bomb",
        "--hostlist",
        "{d}/bomb.gz",
        expect=("hostlist", "larger than 64 MiB", "max-list-bytes", "gzip"),
    ),
    lists(
        "hostlist-gzip-bomb-small-limit",
        "--hostlist",
        "{d}/bomb.gz",
        "--max-list-bytes",
        "4096",
        expect=("hostlist", "4096 bytes"),
    ),
    lists(
        "hostlist-gzip-broken", "--hostlist", "{d}/broken.gz", expect=("hostlist", "broken gzip")
    ),
    lists(
        "hostlist-oversize",
        "--hostlist",
        "{d}/sparse.txt",
        expect=("hostlist", "larger than 64 MiB", "max-list-bytes"),
    ),
    lists(
        "ipset-over-limit",
        "--ipset",
        "{d}/ips-2k.txt",
        "--max-list-bytes",
        "1024",
        expect=("ipset", "1024 bytes"),
    ),
    lists(
        "hostlist-10mb-line",
        "--hostlist",
        "{d}/long-line.txt",
        expect=("hostlist", "line 2", "(10000000 characters)"),
    ),
    lists(
        "hostlist-escape-line",
        "--hostlist",
        "{d}/escape-line.txt",
        expect=("hostlist", "line 1", "\\u{1b}"),
    ),
    lists("hostlist-not-utf8", "--hostlist", "{d}/latin1.txt", expect=("hostlist", "UTF-8")),
    lists("ipset-bad-line", "--ipset", "{d}/bad-ips.txt", expect=("ipset", "line 2")),
    lists("hosts-inline-bad", "--hosts", "good.example,bad host", expect=("hosts", "bad host")),
    lists("ips-inline-bad", "--ips", "198.51.100.0/33", expect=("ips", "198.51.100.0/33")),
    lists("hostlist-nul-in-name", "--hostlist", "{d}/nul-line.txt", expect=("hostlist", "line 1")),
]


def _files(d: Path) -> None:
    for name, content in CONFIGS.items():
        data = content if isinstance(content, bytes) else content.encode()
        (d / name).write_bytes(data)
    (d / "a-directory").mkdir()
    os.mkfifo(d / "fifo.toml")
    os.mkfifo(d / "fifo.txt")
    (d / "unreadable.toml").write_text("split-chunk = 5\n")
    (d / "unreadable.toml").chmod(0)
    with open(d / "huge.toml", "wb") as f:
        f.truncate(17 * 1024 * 1024)
    with open(d / "sparse.txt", "wb") as f:
        f.truncate(65 * 1024 * 1024)
    # 1 GiB of zeros as 1024 gzip members of 1 MiB each (about 1 MB on disk).
    member = gzip.compress(bytes(1024 * 1024), 9)
    (d / "bomb.gz").write_bytes(member * 1024)
    (d / "broken.gz").write_bytes(gzip.compress(b"a.example\n" * 100)[:-30])
    (d / "ips-2k.txt").write_text("198.51.100.1\n" * 160)
    (d / "long-line.txt").write_text("ok.example\n" + "x" * 9_999_999 + "!\n")
    (d / "escape-line.txt").write_text("victim.example\x1b]0;owned\x07 x\n")
    (d / "latin1.txt").write_bytes(b"caf\xe9.example\n")
    (d / "bad-ips.txt").write_text("198.51.100.0/24\n10.0.0.1-10.0.0.9\n")
    (d / "nul-line.txt").write_bytes(b"a\x00b.example\n")


def _command() -> list[str]:
    base = [sys.executable, "-m", "govpass", "run"]
    if not ROOT:
        return base  # no privileges: `run` stops before anything, whatever the case
    if not (shutil.which("unshare") and shutil.which("setpriv")):
        pytest.skip("needs unshare and setpriv to run cases without privileges")
    # Root with only the two capabilities `run` checks for, in a namespace of its own:
    # a case reaches the setting it is about, and could touch nothing outside.
    drop = [
        "setpriv",
        "--inh-caps=-all",
        "--bounding-set=-all,+net_admin,+net_raw",
        "--no-new-privs",
    ]
    return ["unshare", "--net", *drop, *base]


@dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str


def _run(case: Case, d: Path) -> Outcome:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GOVPASS_")}
    environ["GOVPASS_RUN_DIR"] = "/dev/null/govpass-bad-input"
    environ.update(dict(case.env))
    args = [a.replace("{d}", str(d)) for a in case.args]
    if case.lists:
        environ["GOVPASS_RUN_DIR"] = str(d / "run" / case.id)
        args += ["--firewall", "none", "--workers", "1"]
    try:
        p = subprocess.run(
            [*_command(), *args],
            env=environ,
            cwd=d,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        err = (e.stderr or b"").decode(errors="replace")
        return Outcome(None, "", f"timed out after {TIMEOUT} s; stderr: {err[:500]}")
    return Outcome(
        p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    )


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Outcome]]:
    """Runs the selected cases, several at a time (each is a Python start-up)."""
    d = tmp_path_factory.mktemp("bad-input")
    _files(d)
    wanted = {
        item.callspec.params["case"].id
        for item in request.session.items
        if item.path == request.path and hasattr(item, "callspec")
    }
    chosen = [c for c in CASES if c.id in wanted]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(
            zip([c.id for c in chosen], pool.map(lambda c: _run(c, d), chosen), strict=True)
        )
    yield results
    (d / "unreadable.toml").chmod(0o600)


def test_the_table_is_large_and_its_ids_unique() -> None:
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize(
    "case",
    # List files are read by a starting daemon, run as root in a namespace of its own.
    [pytest.param(c, id=c.id, marks=[pytest.mark.netns] if c.lists else []) for c in CASES],
)
def test_bad_input_is_one_line_and_exit_2(case: Case, outcomes: dict[str, Outcome]) -> None:
    if case.lists and not ROOT:
        pytest.skip("list files are read by a starting daemon: needs root (in a namespace)")
    out = outcomes[case.id]
    assert out.code is not None, out.stderr  # no hang
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert len(out.stderr) <= MAX_OUTPUT, out.stderr[:MAX_OUTPUT] + "..."
    assert out.code == case.code, out.stderr
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    line = lines[0]
    assert line.startswith("govpass: "), line
    for part in case.expect:
        assert part in line, (part, line)
    assert any(a in line for a in case.accepts), line
    assert "\x1b" not in line and "\x07" not in line and "\x00" not in line
