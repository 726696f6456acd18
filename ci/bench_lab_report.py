"""Goals, peer figures, the console table and the ``## Lab`` section for ci/bench_lab.py.

Only the ``## Lab`` section of BENCHMARKS.md is ever rewritten: from its heading to the
next ``## `` heading (or the end of the file). Other sections are kept byte for byte.
The section keeps a history of earlier runs between two HTML comment markers.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

# Peers measured in this lab on a machine of this kind (ratios vs no splitter, same run).
PEERS: dict[str, dict[str, float]] = {
    "zapret nfqws (C)": {
        "conn_per_s": 0.73,
        "handshake_p50": 1.23,
        "upload": 0.87,
        "cpu_s_per_1000_conn": 0.12,
    },
    "gov-pass (Go)": {"conn_per_s": 0.56, "upload": 0.16, "cpu_s_per_1000_conn": 0.31},
}

# name -> (text, test on the summary)
GOALS: dict[str, str] = {
    "conn_per_s": "connections/s ratio >= 0.90",
    "handshake_p50": "handshake p50 added <= 0.2 ms",
    "upload": "upload ratio >= 0.97",
    "download": "download ratio >= 0.97",
    "cpu": "CPU s per 1000 connections < 0.12 (nfqws)",
    "drops": "zero kernel queue drops",
}

HISTORY_BEGIN = "<!-- bench_lab history (newest last; kept by ci/bench_lab.py) -->"
HISTORY_END = "<!-- /bench_lab history -->"
HISTORY_KEEP = 8
NOTES_BEGIN = "<!-- bench_lab notes (hand-written; kept by ci/bench_lab.py) -->"
NOTES_END = "<!-- /bench_lab notes -->"


def evaluate(s: dict[str, Any]) -> dict[str, dict[str, Any]]:
    gp = s["govpass"]
    drops = gp["queue_dropped"] + gp["user_dropped"]
    checks = {
        "conn_per_s": (s["ratio"]["conn_per_s"] >= 0.90, f"x{s['ratio']['conn_per_s']:.3f}"),
        "handshake_p50": (
            s["added_ms"]["handshake_p50"] <= 0.2,
            f"{s['added_ms']['handshake_p50']:+.3f} ms",
        ),
        "upload": (s["ratio"]["upload"] >= 0.97, f"x{s['ratio']['upload']:.3f}"),
        "download": (s["ratio"]["download"] >= 0.97, f"x{s['ratio']['download']:.3f}"),
        "cpu": (gp["cpu_s_per_1000_conn"] < 0.12, f"{gp['cpu_s_per_1000_conn']:.3f} s"),
        "drops": (drops == 0, str(drops)),
    }
    return {k: {"goal": GOALS[k], "met": bool(ok), "value": v} for k, (ok, v) in checks.items()}


def _f(x: float, nd: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{nd}f}"


def rows(s: dict[str, Any], v: dict[str, dict[str, Any]]) -> list[list[str]]:
    wo, w, gp = s["without"], s["with"], s["govpass"]
    ok = {k: ("yes" if d["met"] else "**no**") for k, d in v.items()}
    return [
        [
            "New TLS connections/s (wrk)",
            _f(wo["conn_per_s"], 0),
            _f(w["conn_per_s"], 0),
            conn_ratio_cell(s["ratio"]),
            ">= x0.90",
            ok["conn_per_s"],
            "x0.73",
            "x0.56",
        ],
        [
            "Connections per CPU s of wrk + nginx (+ govpass)",
            _f(wo["conn_per_cpu_s"], 0),
            _f(w["conn_per_cpu_s"], 0),
            f"x{s['ratio']['conn_per_cpu_s']:.3f}",
            "-",
            "-",
            "-",
            "-",
        ],
        [
            "Other jobs' CPU during conn/s, cores",
            _f(wo["other_cores"], 2),
            _f(w["other_cores"], 2),
            "-",
            "-",
            "-",
            "-",
            "-",
        ],
        [
            "Handshake p50, ms",
            _f(wo["handshake_p50_ms"], 3),
            _f(w["handshake_p50_ms"], 3),
            f"{s['added_ms']['handshake_p50']:+.3f} ms (x{s['ratio']['handshake_p50']:.2f})",
            "<= +0.2 ms",
            ok["handshake_p50"],
            "x1.23",
            "-",
        ],
        [
            "Handshake p99, ms",
            _f(wo["handshake_p99_ms"], 3),
            _f(w["handshake_p99_ms"], 3),
            f"{s['added_ms']['handshake_p99']:+.3f} ms",
            "-",
            "-",
            "-",
            "-",
        ],
        [
            "Download, 1 connection, MB/s",
            _f(wo["download_MBps"], 0),
            _f(w["download_MBps"], 0),
            f"x{s['ratio']['download']:.3f}",
            ">= x0.97",
            ok["download"],
            "-",
            "-",
        ],
        [
            "Upload, 1 connection, MB/s",
            _f(wo["upload_MBps"], 0),
            _f(w["upload_MBps"], 0),
            f"x{s['ratio']['upload']:.3f}",
            ">= x0.97",
            ok["upload"],
            "x0.87",
            "x0.16",
        ],
        [
            "CPU s per 1000 connections (all govpass processes)",
            "-",
            _f(gp["cpu_s_per_1000_conn"], 3),
            "-",
            "< 0.12",
            ok["cpu"],
            "0.12",
            "0.31",
        ],
        [
            "Packets queued per connection",
            "-",
            _f(gp["packets_per_connection"], 2),
            "-",
            "-",
            "-",
            "-",
            "-",
        ],
        [
            "Kernel queue drops (queue + user)",
            "-",
            str(gp["queue_dropped"] + gp["user_dropped"]),
            "-",
            "0",
            ok["drops"],
            "-",
            "-",
        ],
        [
            "ClientHellos split: sequential handshakes",
            "-",
            f"{100 * gp['split_share_handshake_phase']:.1f} %",
            "-",
            "-",
            "-",
            "-",
            "-",
        ],
        [
            "ClientHellos split: wrk connections",
            "-",
            f"{100 * gp['split_share_conn_phase']:.1f} % "
            f"({100 * gp.get('kernel_split_share_conn_phase', 0.0):.1f} % in the kernel)",
            "-",
            "-",
            "-",
            "-",
            "-",
        ],
    ]


HEAD = ["Measure", "without", "with govpass", "ratio / added", "goal", "met", "nfqws", "gov-pass"]


def conn_ratio_cell(r: dict[str, Any]) -> str:
    if r.get("conn_per_s_quiet_pairs") is None:
        return f"x{r['conn_per_s']:.3f} (no quiet pair)"
    if r["quiet_pairs"] == r["pairs"]:
        return f"x{r['conn_per_s']:.3f}"
    return (
        f"x{r['conn_per_s']:.3f} ({r['quiet_pairs']}/{r['pairs']} quiet pairs; "
        f"all x{r['conn_per_s_all_pairs']:.3f})"
    )


def render_table(s: dict[str, Any], v: dict[str, dict[str, Any]]) -> str:
    table = [HEAD, *rows(s, v)]
    table = [[c.replace("**", "") for c in r] for r in table]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEAD))]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [ln for ln in baseline_lines(s) if ln])


def _md_table(head: list[str], body: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in body]
    return out


def history_row(result: dict[str, Any]) -> str:
    s, m, v = result["summary"], result["machine"], result["goals"]
    gp = s["govpass"]
    missed = ", ".join(k for k, d in v.items() if not d["met"]) or "none"
    cells = [
        m["date"],
        m["git"],
        f"{result['args']['workers']}",
        f"{_f(s['without']['conn_per_s'], 0)} → {_f(s['with']['conn_per_s'], 0)} "
        f"(x{s['ratio']['conn_per_s']:.3f})",
        f"{s['added_ms']['handshake_p50']:+.3f}",
        f"x{s['ratio']['download']:.3f}",
        f"x{s['ratio']['upload']:.3f}",
        f"{gp['cpu_s_per_1000_conn']:.3f}",
        f"{gp['packets_per_connection']:.2f}",
        str(gp["queue_dropped"] + gp["user_dropped"]),
        f"{100 * gp['split_share_conn_phase']:.1f} %",
        missed,
    ]
    return "| " + " | ".join(cells) + " |"


HISTORY_HEAD = [
    "date",
    "commit",
    "workers",
    "conn/s",
    "hs p50 added ms",
    "down",
    "up",
    "CPU s/1000 conn",
    "pkts/conn",
    "drops",
    "wrk hellos split",
    "goals missed",
]


NOISY_CORES = 0.25


# The extra kinds of round, as (summary key, what the round is). Same sentence shape for
# each; the queue-and-pass one adds govpass's own CPU.
BASELINES = (
    (
        "ratio_conntrack_only",
        "Conntrack-only baseline (no govpass; one no-op `-m conntrack` rule in the client "
        "namespace)",
    ),
    (
        "ratio_pass_only",
        "Queue-and-pass baseline (govpass running with a host list no connection matches: "
        "every ClientHello is queued, parsed and released unmodified, nothing is split)",
    ),
)


def baseline_lines(s: dict[str, Any]) -> list[str]:
    """A paragraph per extra kind of round (``--conntrack-baseline``,
    ``--pass-baseline``, ``--variant-arg``) that was measured."""
    lines: list[str] = []
    variant = s.get("ratio_variant")
    kinds = BASELINES
    if variant:
        kinds += (
            (
                "ratio_variant",
                f"Variant (govpass run with `{variant['args']}`; connections/s "
                f"x{variant['conn_per_s_vs_with']:.3f} of the default govpass rounds)",
            ),
        )
    auto = s.get("ratio_auto")
    if auto:
        kinds += (
            (
                "ratio_auto",
                "`--strategy auto` (govpass learning a strategy per host name: the first "
                "replies are queued too, the kernel split is off; connections/s "
                f"x{auto['conn_per_s_vs_with']:.3f}, connections per CPU s "
                f"x{auto['conn_per_cpu_s_vs_with']:.3f} of the default govpass rounds)",
            ),
        )
    for key, what in kinds:
        r = s.get(key)
        if not r:
            continue
        cpu = (
            f"govpass CPU s per 1000 connections {r['cpu_s_per_1000_conn']:.3f}, "
            if "cpu_s_per_1000_conn" in r
            else ""
        )
        lines += [
            f"{what}, against no splitter: connections/s x{r['conn_per_s']:.3f}, "
            f"connections per CPU s x{r['conn_per_cpu_s']:.3f}, handshake p50 "
            f"{r['handshake_p50_added_ms']:+.3f} ms, {cpu}download x{r['download']:.3f}, "
            f"upload x{r['upload']:.3f}.",
            "",
        ]
    return lines


def noise_warning(s: dict[str, Any], cores: int | str = "?") -> list[str]:
    """A warning paragraph when other jobs on the machine loaded it during conn/s."""
    wo, w = s["without"]["other_cores"], s["with"]["other_cores"]
    if max(wo, w) < NOISY_CORES:
        return []
    return [
        f"**Noisy run:** other jobs on the machine used {wo:.2f} cores (without) and "
        f"{w:.2f} cores (with) on average during the connections/s phases, out of "
        f"{cores}; connections/s, latency and throughput ratios of this "
        "run say more about them than about govpass. The CPU-per-connection figures "
        "are the more robust ones.",
        "",
    ]


def section(result: dict[str, Any], old_history: list[str], notes: str = "") -> str:
    s, m, v = result["summary"], result["machine"], result["goals"]
    a = result["args"]
    met = [d["goal"] for d in v.values() if d["met"]]
    missed = [f"{d['goal']} (measured {d['value']})" for d in v.values() if not d["met"]]
    gp = s["govpass"]
    lines = [
        "## Lab",
        "",
        "govpass against no splitter, measured in one run by `ci/bench_lab.py` in the netns",
        "lab (client — censor — server; the censor only forwards, no blocking rules). Server:",
        f"nginx ({m['nginx']}, {a['nginx_workers']} worker, TLS 1.2/1.3, P-256 certificate). "
        "Rounds alternate",
        f"without/with govpass ({a['rounds']} rounds"
        + (f" + {a['rounds'] // 2} conntrack-only" if a.get("conntrack_baseline") else "")
        + (f" + {a['rounds'] // 2} queue-and-pass" if a.get("pass_baseline") else "")
        + (f" + {a['rounds'] // 2} variant" if a.get("variant_arg") else "")
        + (f" + {a['rounds'] // 2} strategy auto" if a.get("strategy_auto") else "")
        + "); govpass is started fresh in the client",
        f'namespace for each "with" round as `{m["govpass_cmd"]}`'
        + (f"; its rules used the pre-filter {m['prefilter']}." if m.get("prefilter") else "."),
        "",
        f"- Command: `{result['command']}` (took {m['elapsed_s']} s)",
        f"- Machine: {m['cpu']}, {m['cores']} cores, kernel {m['kernel']}, "
        f"Python {m['python']}, {m['iptables']}, {m['wrk']}, {m['curl']}",
        f"- Date: {m['date']}, commit {m['git']}",
        '- Load: connections/s = `wrk -t{t} -c{c} -d{d:g}s -H "Connection: close"` (every '
        "request a new TCP+TLS connection; wrk resumes its TLS 1.3 sessions); handshake = "
        "{n} sequential fresh TLS 1.3 handshakes per round from Python, connect() start "
        "to handshake done; bulk = {reps} downloads and {reps} uploads of {mb} MB per round, "
        "each on one TLS connection (curl; uploads verified by the server's rx byte counter), "
        "the best of each round kept, median over rounds; CPU "
        "= utime+stime of the daemon and its workers over the connections/s phase.".format(
            t=a["wrk_threads"],
            c=a["connections"],
            d=a["duration"],
            n=a["handshakes"],
            mb=a["bulk_mb"],
            reps=a["bulk_reps"],
        ),
        "- Peers (nfqws, gov-pass): reference figures from the project brief, measured in "
        "this lab on a machine of this kind, ratios against no splitter in the same run.",
        "",
        *_md_table(HEAD, rows(s, v)),
        "",
        "The connections/s ratio is taken over the quiet pairs (other jobs below 0.1 core "
        "in both rounds) when there are any, else over all pairs; the with/without columns "
        "are means over all rounds. "
        "Per round (ABBA order, pairs matched): connections/s without "
        f"{s['without']['conn_per_s_rounds']}, with {s['with']['conn_per_s_rounds']} "
        f"(pair ratios {s['ratio']['conn_per_s_pairs']}); handshake p50 added per pair "
        f"{s['added_ms']['handshake_p50_pairs']} ms; govpass CPU s per 1000 connections "
        f"{gp['cpu_s_per_1000_conn_rounds']}; "
        f"download MB/s without {s['without']['download_MBps_rounds']}, with "
        f"{s['with']['download_MBps_rounds']}; upload MB/s without "
        f"{s['without']['upload_MBps_rounds']}, with {s['with']['upload_MBps_rounds']}. "
        f"govpass saw {gp['connections']} connections, queued {gp['packets_queued']} "
        f"packets; fail-open reasons: {gp['fail_open'] or 'none'}.",
        "",
        *baseline_lines(s),
        *noise_warning(s, m["cores"]),
        "**Goals met:** " + ("; ".join(met) if met else "none") + ".",
        "",
        "**Goals not met:** " + ("; ".join(missed) if missed else "none") + ".",
        "",
        "History of runs:",
        "",
        HISTORY_BEGIN,
        *_md_table(HISTORY_HEAD, [])[:2],
        *old_history[-(HISTORY_KEEP - 1) :],
        history_row(result),
        HISTORY_END,
        "",
    ]
    if notes:
        lines += [NOTES_BEGIN, notes.strip("\n"), NOTES_END, ""]
    return "\n".join(lines)


_SECTION = re.compile(r"^## Lab[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)


def write_section(path: Path, result: dict[str, Any]) -> None:
    """Replace (or append) the ``## Lab`` section; re-reads the file right before writing."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    old_history: list[str] = []
    notes = ""
    match = _SECTION.search(text)
    if match:
        body = match.group(0)
        if NOTES_BEGIN in body and NOTES_END in body:
            notes = body.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0]
        if HISTORY_BEGIN in body and HISTORY_END in body:
            inner = body.split(HISTORY_BEGIN, 1)[1].split(HISTORY_END, 1)[0]
            old_history = [ln for ln in inner.strip().splitlines()[2:] if ln.startswith("|")]
    new = section(result, old_history, notes)
    if match:
        text = (
            text[: match.start()]
            + new
            + ("\n" if match.end() < len(text) else "")
            + text[match.end() :]
        )
    else:
        if not text:
            text = "# Benchmarks\n\n"
        elif not text.endswith("\n"):
            text += "\n"
        text += ("\n" if not text.endswith("\n\n") else "") + new
    tmp = path.with_suffix(".md.bench_lab.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
