"""Targeting configuration: [[profile]] tables, list shortcuts, list files (gzip,
comments, bad lines), precedence, and the profiles the engine gets from them."""

from __future__ import annotations

import gzip
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from govpass import Engine, EngineConfig
from govpass.config import load
from govpass.errors import ConfigError
from govpass.targeting import (
    ProfileSpec,
    Targeting,
    parse_list,
    read_lines,
    specs_from_config,
    uses_auto,
)
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

HELLOS = Path(__file__).parent / "fixtures" / "hellos"
BLOCKED_HELLO = (HELLOS / "openssl_default.bin").read_bytes()  # SNI blocked.example
INTRANET_HELLO = (HELLOS / "openssl_single_label.bin").read_bytes()  # SNI intranet
CO_UK_HELLO = (HELLOS / "openssl_co_uk.bin").read_bytes()  # SNI www.sub.example.co.uk


def toml(tmp_path: Path, text: str, name: str = "govpass.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def packet(hello: bytes, dst: str = "203.0.113.9", sport: int = 40000, dport: int = 443) -> bytes:
    ip: Any = IPv6(src="2001:db8::2", dst=dst) if ":" in dst else IP(src="198.51.100.2", dst=dst)
    return bytes(ip / TCP(sport=sport, dport=dport, seq=1000, ack=1, flags="PA") / Raw(hello))


def outcome(engine: Engine, pkt: bytes, iface: int = 0) -> str:
    """'split' (segments sent), 'pass' (untouched) for one complete hello packet."""
    actions = engine.process(pkt, 1.0, object(), iface=iface)
    if actions is None:
        return "pass"
    kinds = {a.kind for a in actions}
    from govpass import SEND

    return "split" if SEND in kinds else "pass"


def engine_for(config_or_specs: Any, **kw: Any) -> Engine:
    if isinstance(config_or_specs, tuple | list):
        targeting, engine_config = Targeting(config_or_specs, **kw), EngineConfig()
    else:
        targeting = Targeting.from_config(config_or_specs, **kw)
        engine_config = config_or_specs.engine_config()
    engine = Engine(engine_config)
    engine.set_profiles(targeting.build())
    return engine


# ------------------------------------------------------------------ defaults and shortcuts


def test_default_is_todays_behaviour() -> None:
    config = load(env={})
    assert specs_from_config(config) == ()
    assert not Targeting.from_config(config).active
    assert not uses_auto(config)


def test_inline_hosts_make_listed_and_other() -> None:
    config = load(env={}, flags={"hosts": "blocked.example", "split-chunk": "3"})
    listed, other = specs_from_config(config)
    assert (listed.name, listed.action, listed.split_chunk, listed.hosts) == (
        "listed",
        "split",
        3,
        ("blocked.example",),
    )
    assert (other.name, other.action) == ("other", "pass")
    engine = engine_for(config)
    assert engine.profile_names() == ["listed", "other"]
    assert outcome(engine, packet(BLOCKED_HELLO)) == "split"
    assert outcome(engine, packet(INTRANET_HELLO, sport=40001)) == "pass"


def test_every_shortcut_turns_profiles_on(tmp_path: Path) -> None:
    hosts = write(tmp_path / "h.txt", "example\n")
    ips = write(tmp_path / "i.txt", "203.0.113.0/24\n")
    for name, value in (
        ("hostlist", str(hosts)),
        ("hosts", "a.example"),
        ("hostlist-exclude", str(hosts)),
        ("hosts-exclude", "a.example"),
        ("ipset", str(ips)),
        ("ips", "203.0.113.9"),
        ("ipset-exclude", str(ips)),
        ("ips-exclude", "2001:db8::/32"),
        ("hostlist-auto", str(tmp_path / "auto.txt")),
    ):
        specs = specs_from_config(load(env={}, flags={name: value}))
        assert [s.name for s in specs] == ["listed", "other"], name
    # Thresholds alone change no profile.
    assert specs_from_config(load(env={}, flags={"auto-fail-threshold": "5"})) == ()


def test_shortcuts_from_env_and_precedence(tmp_path: Path) -> None:
    a = write(tmp_path / "a.txt", "a.example\n")
    b = write(tmp_path / "b.txt", "b.example\n")
    cfg = toml(tmp_path, f'hostlist = ["{a.as_posix()}"]\nhosts = "x.example"\n')
    env = {"GOVPASS_HOSTLIST": str(b)}
    listed = specs_from_config(load(cfg, env=env))[0]
    assert listed.hostlist == (b,) and listed.hosts == ("x.example",)
    listed = specs_from_config(load(cfg, env=env, flags={"hosts": "y.example,z.example"}))[0]
    assert listed.hostlist == (b,) and listed.hosts == ("y.example", "z.example")


def test_exclude_only_splits_everything_else() -> None:
    engine = engine_for(load(env={}, flags={"hosts-exclude": "blocked.example"}))
    assert outcome(engine, packet(BLOCKED_HELLO)) == "pass"
    assert outcome(engine, packet(INTRANET_HELLO, sport=40001)) == "split"


def test_ipset_and_exclude() -> None:
    config = load(
        env={}, flags={"ips": "203.0.113.0/24,2001:db8:9::/48", "ips-exclude": "203.0.113.7"}
    )
    engine = engine_for(config)
    assert outcome(engine, packet(BLOCKED_HELLO, "203.0.113.9")) == "split"
    assert outcome(engine, packet(BLOCKED_HELLO, "203.0.113.7", sport=40001)) == "pass"
    assert outcome(engine, packet(BLOCKED_HELLO, "198.51.100.77", sport=40002)) == "pass"
    assert outcome(engine, packet(BLOCKED_HELLO, "2001:db8:9::1", sport=40003)) == "split"


def test_auto_shortcut_learns_into_hosts(tmp_path: Path) -> None:
    auto = tmp_path / "auto.txt"
    config = load(env={}, flags={"hostlist-auto": str(auto), "auto-retrans": "2"})
    assert uses_auto(config) and config.engine_config().auto_retrans == 2
    listed = specs_from_config(config)[0]
    assert listed.auto == auto
    targeting = Targeting.from_config(config)
    assert targeting.auto and targeting.auto_files() == {"listed": auto}
    engine = engine_for(config)  # the auto file does not exist yet: an empty list
    assert outcome(engine, packet(BLOCKED_HELLO)) == "pass"
    assert engine.stats()["watched"] == 1
    auto.write_text("# learned\nblocked.example\n")
    engine.set_profiles(targeting.build())
    assert outcome(engine, packet(BLOCKED_HELLO, sport=40001)) == "split"


def test_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    cfg = toml(conf_dir, 'hostlist = ["lists/a.txt"]\n')
    monkeypatch.chdir(tmp_path)
    assert specs_from_config(load(cfg, env={}))[0].hostlist == (conf_dir / "lists/a.txt",)
    flag = specs_from_config(load(env={}, flags={"hostlist": "b.txt"}))[0]
    assert flag.hostlist == (tmp_path / "b.txt",)
    profiles = toml(conf_dir, '[[profile]]\nname = "p"\nhostlist = "x.txt"\nauto = "auto.txt"\n')
    spec = specs_from_config(load(profiles, env={}))[0]
    assert spec.hostlist == (conf_dir / "x.txt",) and spec.auto == conf_dir / "auto.txt"


# ------------------------------------------------------------------ [[profile]] tables


PROFILES = """
split-chunk = 5

[[profile]]
name = "uk"
hosts = ["co.uk"]
split-chunk = 2
split-pos = ["midsld"]

[[profile]]
name = "lists"
hostlist = ["{hosts}"]
ipset-exclude = "{ips}"
family = "ipv4"

[[profile]]
name = "rest"
action = "pass"
"""


def test_profiles_from_toml(tmp_path: Path) -> None:
    hosts = write(tmp_path / "hosts.txt", "blocked.example\n")
    ips = write(tmp_path / "ips.txt", "203.0.113.7\n")
    cfg = toml(tmp_path, PROFILES.format(hosts=hosts.as_posix(), ips=ips.as_posix()))
    config = load(cfg, env={})
    specs = specs_from_config(config)
    assert [s.name for s in specs] == ["uk", "lists", "rest"]
    assert specs[0] == ProfileSpec("uk", split_chunk=2, split_pos=("midsld",), hosts=("co.uk",))
    assert specs[1].hostlist == (hosts,) and specs[1].ipset_exclude == (ips,)
    assert specs[1].family == "ipv4" and specs[1].split_chunk == 5
    engine = engine_for(config)
    # each profile its own strategy: "uk" cuts 2 bytes first
    actions = engine.process(packet(CO_UK_HELLO), 1.0, object())
    assert actions is not None
    from govpass import SEND

    sizes = [len(a.packet) - 40 for a in actions if a.kind == SEND]
    assert sizes[0] == 2
    assert outcome(engine, packet(BLOCKED_HELLO, sport=40001)) == "split"
    assert outcome(engine, packet(BLOCKED_HELLO, "203.0.113.7", sport=40002)) == "pass"
    assert outcome(engine, packet(BLOCKED_HELLO, "2001:db8::9", sport=40003)) == "pass"
    assert outcome(engine, packet(INTRANET_HELLO, sport=40004)) == "pass"


def test_profiles_under_a_govpass_table(tmp_path: Path) -> None:
    cfg = toml(tmp_path, '[govpass]\nsplit-chunk = 4\n\n[[profile]]\nname = "all"\n')
    config = load(cfg, env={})
    assert config.split_chunk == 4
    assert specs_from_config(config) == (ProfileSpec("all", split_chunk=4),)


def test_ports_and_interfaces(tmp_path: Path) -> None:
    cfg = toml(
        tmp_path,
        'ports = "443,8443"\n[[profile]]\nname = "alt"\nports = [8443]\niface = "wan0"\n'
        '[[profile]]\nname = "rest"\naction = "pass"\n',
    )
    config = load(cfg, env={})
    engine = engine_for(config, ifindex={"wan0": 7}.__getitem__)
    assert outcome(engine, packet(BLOCKED_HELLO, dport=8443), iface=7) == "split"
    assert outcome(engine, packet(BLOCKED_HELLO, sport=40001, dport=8443), iface=3) == "pass"
    assert outcome(engine, packet(BLOCKED_HELLO, sport=40002, dport=443), iface=7) == "pass"
    with pytest.raises(ConfigError, match="profile 'alt': no network interface named 'wan0'"):
        Targeting.from_config(config, ifindex=lambda name: (_ for _ in ()).throw(OSError())).build()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[[profile]]\nname = "a"\nhostlists = "x"\n', "[[profile]] 'a': unknown key 'hostlists'"),
        ('[[profile]]\nname = "a"\naction = "drop"\n', "invalid action 'drop'"),
        ('[[profile]]\nname = "a b"\n', "invalid name 'a b'"),
        ('[[profile]]\nname = "a"\n[[profile]]\nname = "a"\n', "name 'a' is used twice"),
        ('[[profile]]\nname = "a"\nsplit-chunk = -1\n', "[[profile]] 'a': invalid split-chunk"),
        ('[[profile]]\nname = "a"\nsplit-pos = "nowhere"\n', "[[profile]] 'a':"),
        ('[[profile]]\nname = "a"\naction = "pass"\nsplit-chunk = 3\n', "need action = split"),
        ('[[profile]]\nname = "a"\naction = "pass"\nauto = "x"\n', "auto needs action = split"),
        ('[[profile]]\nname = "a"\nfamily = "ipv5"\n', "invalid family 'ipv5'"),
        ('[[profile]]\nname = "a"\nports = [8443]\n', "port 8443 is not captured"),
        ('[[profile]]\nname = "a"\nports = ["x"]\n', "invalid port 'x'"),
        ('[[profile]]\nname = "a"\nhosts = 5\n', "(accepted: a string or an array of strings)"),
        ('[[profile]]\nname = "a"\nhosts = ["bad host"]\n', "hosts of profile 'a' entry 1"),
        ('[[profile]]\nname = "a"\nips = "1.2.3.4/33"\n', "ips of profile 'a' entry 1"),
        ("profile = 3\n", "'profile' is an integer (accepted: an array of tables"),
    ],
)
def test_profile_errors_are_one_line(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(toml(tmp_path, body), env={})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_profiles_and_shortcuts_do_not_mix(tmp_path: Path) -> None:
    cfg = toml(tmp_path, '[[profile]]\nname = "a"\n')
    with pytest.raises(
        ConfigError, match=r"hosts \(flag\) cannot be combined with \[\[profile\]\]"
    ):
        load(cfg, env={}, flags={"hosts": "a.example"})


def test_unknown_top_level_key_still_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown setting 'hostlistt'"):
        load(toml(tmp_path, 'hostlistt = "x"\n'), env={})


# ------------------------------------------------------------------ list files


def test_list_syntax(tmp_path: Path) -> None:
    path = write(
        tmp_path / "hosts.txt",
        "# comment\n\nexample.com\n  ^exact.org  \nwith.comment.net # trailing\r\n",
    )
    config = load(env={}, flags={"hostlist": str(path)})
    targeting = Targeting.from_config(config)
    targeting.build()
    (hl,) = targeting.cache._items.values()
    hosts = hl[1]
    assert len(hosts) == 3
    assert "www.example.com" in hosts and "example.com" in hosts
    assert "exact.org" in hosts and "www.exact.org" not in hosts
    assert "with.comment.net" in hosts
    assert "listed: split (3 hosts)" in targeting.summary


def test_gzip_lists_by_magic(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts.list"  # no .gz suffix: the magic bytes decide
    hosts.write_bytes(gzip.compress(b"blocked.example\n"))
    ips = tmp_path / "ips.gz"
    ips.write_bytes(gzip.compress(b"203.0.113.0/24\n2001:db8::/32\n"))
    assert read_lines(hosts, "hostlist") == ["blocked.example", ""]
    engine = engine_for(load(env={}, flags={"hostlist": str(hosts)}))
    assert outcome(engine, packet(BLOCKED_HELLO)) == "split"
    engine = engine_for(load(env={}, flags={"ipset": str(ips)}))
    assert outcome(engine, packet(INTRANET_HELLO, "2001:db8::9")) == "split"


def test_list_bytes_parse_as_their_lines() -> None:
    from govpass._core import HostList, IpSet

    data = b"\xef\xbb\xbfA.example\r\n# comment\n\n^exact.org  # why\n"
    hosts = HostList.from_bytes(data)
    assert len(hosts) == len(HostList(data.decode("utf-8-sig").split("\n"))) == 2
    assert "www.a.example" in hosts and "exact.org" in hosts and "www.exact.org" not in hosts
    assert hosts.skipped == 0 and hosts.skipped_lines == []
    lenient = HostList.from_bytes(b"ok.example\nbad host\n*.x\n", skip_invalid=True)
    assert len(lenient) == 1 and lenient.skipped == 2 and lenient.skipped_lines == [2, 3]
    with pytest.raises(ConfigError, match="line 2"):
        HostList.from_bytes(b"ok.example\nbad host\n")
    ips = IpSet.from_bytes(b"203.0.113.0/24 # lab\r\n2001:db8::/32\n")
    assert "203.0.113.7" in ips and "2001:db8::1" in ips and "198.51.100.1" not in ips
    with pytest.raises(ConfigError, match="line 1"):
        IpSet.from_bytes(b"\xff\n")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"ok.example\n\n# c\nbad host\n",
            'hostlist {path} line 4: "bad host" is not a valid entry',
        ),
        (b"*.wild.example\n", 'hostlist {path} line 1: "*.wild.example" is not a valid entry'),
        (b"ok.example\n\xff\xfe\n", "hostlist {path} line 2: not UTF-8 text"),
        (b"\x1f\x8bnot gzip at all", "hostlist {path}: broken gzip data"),
        (gzip.compress(b"a.example\n^\n"), 'hostlist {path} line 2: "^" is not a valid entry'),
    ],
)
def test_bad_host_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "hosts.txt"
    path.write_bytes(content)
    targeting = Targeting.from_config(load(env={}, flags={"hostlist": str(path)}))
    with pytest.raises(ConfigError) as err:
        targeting.build()
    assert str(err.value).startswith(message.format(path=path)), str(err.value)
    assert err.value.field == "hostlist"


def test_bad_ipset_and_missing_files(tmp_path: Path) -> None:
    ips = write(tmp_path / "ips.txt", "203.0.113.0/24\n10.0.0.1-10.0.0.9\n")
    with pytest.raises(ConfigError, match=re.escape(f'ipset-exclude {ips} line 2: "10.0.0.1-')):
        Targeting.from_config(load(env={}, flags={"ipset-exclude": str(ips)})).build()
    missing = tmp_path / "nope.txt"
    with pytest.raises(ConfigError, match=re.escape(f"hostlist {missing}: cannot read: no such")):
        Targeting.from_config(load(env={}, flags={"hostlist": str(missing)})).build()
    unreadable = tmp_path / "dir"
    unreadable.mkdir()
    # Windows refuses to open a directory as a file (EACCES) before it can be looked at.
    why = (
        "cannot read: Permission denied"
        if sys.platform == "win32"
        else "a directory \\(accepted: a regular file\\)"
    )
    with pytest.raises(ConfigError, match=f"ipset {re.escape(str(unreadable))}: {why}"):
        Targeting.from_config(load(env={}, flags={"ipset": str(unreadable)})).build()


def test_unchanged_files_are_not_parsed_again(tmp_path: Path) -> None:
    a = write(tmp_path / "a.txt", "a.example\n")
    b = write(tmp_path / "b.txt", "b.example\n")
    targeting = Targeting.from_config(load(env={}, flags={"hostlist": f"{a},{b}"}))
    targeting.build()
    first = dict(targeting.cache._items)
    b.write_text("b.example\nc.example\n")
    targeting.build()
    assert targeting.cache._items[("hostlist", a)][1] is first[("hostlist", a)][1]
    assert targeting.cache._items[("hostlist", b)][1] is not first[("hostlist", b)][1]
    targeting.build(force=True)  # SIGHUP: everything again
    assert targeting.cache._items[("hostlist", a)][1] is not first[("hostlist", a)][1]


# ------------------------------------------------------------------ bounded reading


def test_list_reading_is_bounded_by_max_list_bytes(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_bytes(b"a.example\n" * 200)  # 2000 bytes (no newline translation)
    config = load(env={}, flags={"hostlist": str(big), "max-list-bytes": "1024"})
    with pytest.raises(ConfigError) as e:
        Targeting.from_config(config).build()
    assert str(e.value) == (
        f"hostlist {big}: larger than 1024 bytes "
        "(accepted: at most 1024 bytes; raise max-list-bytes to read more)"
    )
    ok = load(env={}, flags={"hostlist": str(big), "max-list-bytes": "2000"})
    Targeting.from_config(ok).build()


def test_gzip_output_is_bounded_too(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.gz"
    member = gzip.compress(bytes(1024 * 1024), 9)
    bomb.write_bytes(member * 80)  # 80 MiB of zeros in about 80 kB
    with pytest.raises(ConfigError, match=r"larger than 64 MiB .*\(after gzip decompression\)"):
        read_lines(bomb, "hostlist")
    small = tmp_path / "small.gz"
    small.write_bytes(gzip.compress(b"a.example\n") * 3)  # several members are one file
    assert read_lines(small, "hostlist") == ["a.example", "a.example", "a.example", ""]


@pytest.mark.linux_only  # FIFOs and device files; Windows refuses a directory at open
@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_only_regular_files_are_read(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "list"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path = Path("/dev/zero")
    with pytest.raises(ConfigError, match=r"\(accepted: a regular file\)"):
        read_lines(path, "ipset")


def test_a_10_mb_bad_line_gives_a_short_error(tmp_path: Path) -> None:
    path = tmp_path / "hosts.txt"
    path.write_text("ok.example\n" + "x" * 9_999_999 + "!\n")
    with pytest.raises(ConfigError) as e:
        parse_list("hostlist", read_lines(path, "hostlist"), f"hostlist {path}")
    assert len(str(e.value)) < 300 + len(str(path))
    assert "line 2: " in str(e.value) and "(10000000 characters)" in str(e.value)


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        pytest.param(  # ~user is looked up in the POSIX user database
            "~nosuchuser-govpass/list.txt",
            "no user named 'nosuchuser-govpass'",
            marks=pytest.mark.linux_only,
        ),
        ("a\x00b", "control character"),
        ("a\x1b[2Jb", "control character"),
    ],
)
def test_unusable_paths_are_one_line(value: str, expect: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(env={}, flags={"hostlist": value})
    assert expect in str(e.value) and e.value.field == "hostlist"
    assert "\x1b" not in str(e.value) and "\x00" not in str(e.value)


@pytest.mark.parametrize(
    ("table", "expect"),
    [
        ('family = ["ipv4"]', "invalid family ['ipv4']"),
        ("family = { v = 4 }", "invalid family {'v': 4}"),
        ('name = "video\\n"', "invalid name 'video\\x0a'"),
        ('action = ["split"]', "invalid action ['split']"),
    ],
)
def test_profile_values_of_the_wrong_type(tmp_path: Path, table: str, expect: str) -> None:
    text = "[[profile]]\n" + ("" if table.startswith("name") else 'name = "a"\n') + table + "\n"
    path = tmp_path / "govpass.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load(file=path, env={})
    assert expect in str(e.value)
