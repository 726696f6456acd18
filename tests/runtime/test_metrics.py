"""govpass.runtime.metrics: the text format, its escaping, the `metrics` setting, and
a real server on loopback."""

from __future__ import annotations

import http.client
import os
import re
import socket
import time
from collections.abc import Iterator

import pytest
from govpass.config import load
from govpass.errors import ConfigError, GovpassError
from govpass.runtime import metrics
from govpass.runtime.metrics import MetricsServer, escape_label, render
from govpass.runtime.service import run
from govpass.settings import listen_address
from scripted import Scripted

# One sample line of the text format: name, optional labels, value.
SAMPLE = re.compile(r'[a-z_0-9]+(\{([a-z]+="([^"\\\n]|\\\\|\\"|\\n)*",?)+\})? -?[0-9.e+]+\Z')


def _samples(body: str) -> dict[str, str]:
    out = {}
    for line in body.splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP|TYPE) govpass_[a-z_0-9]+ .+", line), line
            continue
        assert SAMPLE.match(line), line
        name, _, value = line.rpartition(" ")
        out[name] = value
    return out


# ---------------------------------------------------------------- format


def test_counters_gauges_and_fail_open_reasons() -> None:
    stats = {
        "splits": 3,
        "flows_now": 2,
        "held_bytes_peak": 700,
        "workers": 2,
        "kernel_split": 5,
        "bypassed": 1,
        "queue_dropped": 0,
        "fail_open": {"not a hello": 4, "timeout": 1},
        "strategy_counts": {"p:1": 3, "2,midsld": 1},
        "kernel_split_state": "on (veth0)",
    }
    body = render(stats)
    assert body.endswith("\n")
    samples = _samples(body)
    assert samples == {
        "govpass_splits_total": "3",
        "govpass_kernel_split_total": "5",
        "govpass_bypassed_total": "1",
        "govpass_queue_dropped_total": "0",
        "govpass_flows_now": "2",
        "govpass_held_bytes_peak": "700",
        "govpass_workers": "2",
        'govpass_fail_open_total{reason="not a hello"}': "4",
        'govpass_fail_open_total{reason="timeout"}': "1",
        'govpass_strategy_counts{profile="p",strategy="1"}': "3",
        'govpass_strategy_counts{profile="",strategy="2,midsld"}': "1",
        'govpass_kernel_split_info{state="on (veth0)"}': "1",
    }
    assert "# TYPE govpass_splits_total counter" in body
    assert "# TYPE govpass_flows_now gauge" in body
    assert "# TYPE govpass_workers gauge" in body
    assert "# HELP govpass_splits_total splits" in body
    # Each family once, its HELP and TYPE before its samples.
    types = re.findall(r"^# TYPE (\S+)", body, re.M)
    assert len(types) == len(set(types))


def test_what_is_no_plain_number_or_name_is_left_out() -> None:
    body = render(
        {
            "splits": True,
            "flows": float("inf"),
            "Bad-Key": 1,
            "x" * 80: 1,
            "evil\nkey": 1,
            "segments": "7",
            "resplits": 2.5,
            "fail_open": {"a": "x", "b": 2},
        }
    )
    samples = _samples(body)
    assert samples == {"govpass_resplits_total": "2.5", 'govpass_fail_open_total{reason="b"}': "2"}


def test_no_counters_is_still_a_valid_page() -> None:
    assert _samples(render({})) == {}
    assert "# TYPE govpass_fail_open_total counter" in render({})


def test_label_values_are_escaped_and_bounded() -> None:
    assert escape_label('a\\b"c') == 'a\\\\b\\"c'
    assert escape_label("line\nbreak") == "line\\\\x0abreak"  # one line, the escape kept visible
    assert escape_label("\x1b[31mred") == "\\\\x1b[31mred"
    assert escape_label("\ud800") == "\\\\ud800"  # a lone surrogate (JSON allows it)
    assert len(escape_label("r" * 10_000)) <= metrics.MAX_LABEL
    hostile = {"fail_open": {'x"} 1\ngovpass_fake_total 9\n#': 1, "y" * 5000: 2}}
    body = render(hostile)
    assert "govpass_fake_total 9" not in body.splitlines()
    samples = _samples(body)
    assert len(samples) == 2
    assert all(len(k) < 200 for k in samples)


def test_series_per_family_are_bounded() -> None:
    body = render({"fail_open": {f"r{i}": 1 for i in range(10_000)}})
    assert len(_samples(body)) == metrics.MAX_SERIES
    body = render({f"k{i}": 1 for i in range(10_000)})
    assert len(_samples(body)) == metrics.MAX_KEYS


# ---------------------------------------------------------------- the setting


@pytest.mark.parametrize(
    ("value", "canonical", "address"),
    [
        ("127.0.0.1:9100", "127.0.0.1:9100", ("127.0.0.1", 9100)),
        ("9100", "127.0.0.1:9100", ("127.0.0.1", 9100)),
        ("localhost:9100", "127.0.0.1:9100", ("127.0.0.1", 9100)),
        ("0.0.0.0:80", "0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:9100", "[::1]:9100", ("::1", 9100)),
        ("[2001:DB8:0::1]:1", "[2001:db8::1]:1", ("2001:db8::1", 1)),
        ("", "", None),
        ("off", "", None),
    ],
)
def test_the_setting_takes_an_address_and_port(
    value: str, canonical: str, address: tuple[str, int] | None
) -> None:
    c = load(env={}, flags={"metrics": value})
    assert c.metrics == canonical
    assert listen_address(c.metrics) == address
    assert load(env={"GOVPASS_METRICS": value}).metrics == canonical


def test_the_setting_is_off_by_default() -> None:
    assert load(env={}).metrics == ""


@pytest.mark.parametrize(
    "value",
    ["on", "host.example:80", "1.2.3.4", "1.2.3.4:0", "1.2.3.4:65536", "[::1]", "::1:80",
     "[fe80::1%eth0]:80", "9100x", "1.2.3.4:+80", "1.2.3.4:8\n0", "01.2.3.4:80"],
)  # fmt: skip
def test_anything_else_is_one_line_naming_the_setting(value: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(env={}, flags={"metrics": value})
    message = str(e.value)
    assert e.value.field == "metrics"
    assert message.startswith("invalid metrics: ") and "\n" not in message
    assert "accepted: HOST:PORT" in message and "[IPV6]:PORT" in message


# ---------------------------------------------------------------- the server


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    srv = MetricsServer("127.0.0.1", 0, {"splits": 1}).start()
    try:
        yield srv
    finally:
        srv.close()


def _get(srv: MetricsServer, path: str, method: str = "GET") -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection(*srv.address, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()


def test_a_real_server_answers_get_metrics(server: MetricsServer) -> None:
    status, headers, body = _get(server, "/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert _samples(body)["govpass_splits_total"] == "1"
    server.update({"splits": 7, "workers": 1})
    samples = _samples(_get(server, "/metrics?x=1")[2])
    assert samples["govpass_splits_total"] == "7" and samples["govpass_workers"] == "1"


def test_other_paths_are_404_and_other_methods_refused(server: MetricsServer) -> None:
    for path in ("/", "/metrics/", "/stats", "/../metrics"):
        assert _get(server, path)[0] == 404, path
    assert _get(server, "/metrics", "POST")[0] == 501
    assert _get(server, "/metrics", "DELETE")[0] == 501


def test_an_oversized_request_does_not_get_metrics(server: MetricsServer) -> None:
    with socket.create_connection(server.address, timeout=5) as s:
        s.sendall(b"GET /" + b"a" * 100_000 + b" HTTP/1.0\r\n\r\n")
        reply = _read_all(s)
    assert reply.startswith(b"HTTP/1.0 414 "), reply[:100]
    assert b"govpass_splits_total" not in reply
    assert _get(server, "/metrics")[0] == 200  # still serving


def test_a_bad_request_line_is_answered_and_nothing_is_logged(
    server: MetricsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.create_connection(server.address, timeout=5) as s:
        s.sendall(b"\x1b[31m\r\n\r\n")
        reply = _read_all(s)
    assert reply.startswith(b"HTTP/1.0 400 "), reply[:100]
    with socket.create_connection(server.address, timeout=5) as s:
        s.sendall(b"GET /metrics\r\n")  # HTTP/0.9: no headers to say what the body is
        reply = _read_all(s)
    assert reply.startswith(b"HTTP/1.0 400 "), reply[:100]
    assert capsys.readouterr().err == ""


def _read_all(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def test_a_client_that_sends_nothing_does_not_block_the_stop() -> None:
    srv = MetricsServer("127.0.0.1", 0, {}).start()
    idle = socket.create_connection(srv.address, timeout=5)
    try:
        time.sleep(0.2)  # accepted, its thread waits for a request line
        assert _get(srv, "/metrics")[0] == 200  # it does not hold up others
        begun = time.monotonic()
        srv.close()
        assert time.monotonic() - begun < 1.5
        with pytest.raises(OSError):
            socket.create_connection(srv.address, timeout=1).close()
    finally:
        idle.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_does_not_keep_the_listening_socket(server: MetricsServer) -> None:
    fd = server._server.socket.fileno()
    pid = os.fork()
    if pid == 0:  # the child: is the listening socket's descriptor still open?
        try:
            os.fstat(fd)
        except OSError:
            os._exit(0)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _get(server, "/metrics")[0] == 200  # the parent's still serves


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        srv = MetricsServer("::1", 0, {"splits": 2}).start()
    except OSError as e:
        pytest.skip(f"no ::1 here: {e}")
    try:
        assert srv.url.startswith("http://[::1]:")
        assert _samples(_get(srv, "/metrics")[2])["govpass_splits_total"] == "2"
    finally:
        srv.close()


def test_a_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(GovpassError) as e:
            metrics.serve(f"127.0.0.1:{port}", {})
    assert str(e.value).startswith(f"cannot serve metrics on 127.0.0.1:{port}: ")
    assert "\n" not in str(e.value)
    assert metrics.serve("", {}) is None


# ---------------------------------------------------------------- in the runtime's loop


def test_the_loop_serves_its_latest_stats_and_stops_the_server() -> None:
    with socket.socket() as probe:  # a free port (the setting takes no port 0)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    seen: list[str] = []

    def scrape() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/metrics")
        seen.append(_samples(conn.getresponse().read().decode())["govpass_splits_total"])
        conn.close()

    log: list[str] = []
    run(
        Scripted(after_tick=scrape), log.append, 0.0, interactive=False, metrics=f"127.0.0.1:{port}"
    )
    assert seen == ["1", "2", "3"]
    assert f"metrics: http://127.0.0.1:{port}/metrics" in log
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
