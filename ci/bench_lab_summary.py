"""From the rounds of ci/bench_lab.py to the summary: round order, percentiles, ratios,
the quiet-pair estimator and govpass's own counters."""

from __future__ import annotations

import statistics
from typing import Any

# Every kind of round; all but "without" and "conntrack" run govpass.
GOVPASS_MODES_ALL = ("without", "with", "conntrack", "pass", "variant", "auto")
# A round is "quiet" when other jobs used fewer cores than this during its conn/s phase.
QUIET_CORES = 0.1


def percentile(values: list[float], q: float) -> float:
    """Percentile q (0..100, 0.1 steps), linearly interpolated (``statistics.quantiles``)."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]


def round_modes(
    rounds: int,
    conntrack: bool = False,
    passing: bool = False,
    variant: bool = False,
    auto: bool = False,
) -> list[str]:
    """ABBA order — without, with | with, without | ... — so a steady drift in the
    machine's speed (other jobs starting or ending) weighs on both sides alike. With the
    conntrack, pass, variant and/or auto rounds each group is without, with, conntrack,
    pass, variant, auto (reversed every other)."""
    base = [
        "without",
        "with",
        *(["conntrack"] if conntrack else []),
        *(["pass"] if passing else []),
        *(["variant"] if variant else []),
        *(["auto"] if auto else []),
    ]
    return [m for k in range(rounds // 2) for m in (base if k % 2 == 0 else base[::-1])]


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def by(mode: str) -> list[dict[str, Any]]:
        return [r for r in rounds if r["mode"] == mode]

    s: dict[str, Any] = {}
    for mode in GOVPASS_MODES_ALL:
        rs = by(mode)
        if not rs:
            continue
        hs = [x for r in rs for x in r["handshake_us"]]
        stack_cpu = sum(
            r["wrk"]["wrk_cpu_s"] + r["wrk"]["nginx_cpu_s"] + r.get("cpu_s", 0.0) for r in rs
        )
        s[mode] = {
            "conn_per_s": statistics.mean(r["wrk"]["rps"] for r in rs),
            "conn_per_s_rounds": [round(r["wrk"]["rps"]) for r in rs],
            # connections per CPU second of wrk + nginx (+ govpass): less sensitive to
            # other jobs on the machine than connections per wall-clock second
            "conn_per_cpu_s": sum(r["wrk"]["connections"] for r in rs) / stack_cpu,
            "other_cores": statistics.mean(r["wrk"]["other_cores"] for r in rs),
            "handshake_p50_ms": percentile(hs, 50) / 1000,
            "handshake_p99_ms": percentile(hs, 99) / 1000,
            "handshake_p50_ms_rounds": [
                round(percentile(r["handshake_us"], 50) / 1000, 3) for r in rs
            ],
            "handshakes": len(hs),
            "download_MBps": statistics.median(r["download"]["mbps"] for r in rs),
            "upload_MBps": statistics.median(r["upload"]["mbps"] for r in rs),
            "download_MBps_rounds": [round(r["download"]["mbps"]) for r in rs],
            "upload_MBps_rounds": [round(r["upload"]["mbps"]) for r in rs],
            "wrk_errors": sum(r["wrk"]["errors"] + r["wrk"]["non2xx"] for r in rs),
        }
    extra = (
        ("conntrack", "ratio_conntrack_only"),
        ("pass", "ratio_pass_only"),
        ("variant", "ratio_variant"),
        ("auto", "ratio_auto"),
    )
    for mode, key in extra:
        if mode not in s:
            continue
        base, wo = s[mode], s["without"]
        s[key] = {
            "conn_per_s": base["conn_per_s"] / wo["conn_per_s"],
            "conn_per_cpu_s": base["conn_per_cpu_s"] / wo["conn_per_cpu_s"],
            "handshake_p50_added_ms": base["handshake_p50_ms"] - wo["handshake_p50_ms"],
            "download": base["download_MBps"] / wo["download_MBps"],
            "upload": base["upload_MBps"] / wo["upload_MBps"],
        }
        if mode in ("pass", "variant", "auto"):
            rs = by(mode)
            conns = sum(r["wrk"]["connections"] for r in rs)
            s[key]["cpu_s_per_1000_conn"] = (
                1000 * sum(r.get("cpu_s", 0.0) for r in rs) / conns if conns else float("nan")
            )
    if "variant" in s:
        # The variant against the default govpass rounds of the same run.
        s["ratio_variant"]["args"] = by("variant")[0].get("variant", "")
    for mode, key in (("variant", "ratio_variant"), ("auto", "ratio_auto")):
        if mode in s:  # against the default govpass rounds of the same run
            s[key]["conn_per_s_vs_with"] = s[mode]["conn_per_s"] / s["with"]["conn_per_s"]
            s[key]["conn_per_cpu_s_vs_with"] = (
                s[mode]["conn_per_cpu_s"] / s["with"]["conn_per_cpu_s"]
            )
    w, wo = s["with"], s["without"]
    pairs = list(zip(by("without"), by("with"), strict=True))
    # Pairs where other jobs left both rounds alone: the headline connections/s ratio
    # when there is at least one (a burst of other work in one round of a pair skews it).
    quiet = [
        (a, b)
        for a, b in pairs
        if max(a["wrk"]["other_cores"], b["wrk"]["other_cores"]) < QUIET_CORES
    ]
    all_ratio = w["conn_per_s"] / wo["conn_per_s"]
    quiet_ratio = (
        sum(b["wrk"]["rps"] for _, b in quiet) / sum(a["wrk"]["rps"] for a, _ in quiet)
        if quiet
        else None
    )
    s["ratio"] = {
        "conn_per_s": quiet_ratio if quiet_ratio is not None else all_ratio,
        "conn_per_s_all_pairs": all_ratio,
        "conn_per_s_quiet_pairs": quiet_ratio,
        "quiet_pairs": len(quiet),
        "pairs": len(pairs),
        "conn_per_s_pairs": [round(b["wrk"]["rps"] / a["wrk"]["rps"], 3) for a, b in pairs],
        "conn_per_cpu_s": w["conn_per_cpu_s"] / wo["conn_per_cpu_s"],
        "handshake_p50": w["handshake_p50_ms"] / wo["handshake_p50_ms"],
        "download": w["download_MBps"] / wo["download_MBps"],
        "upload": w["upload_MBps"] / wo["upload_MBps"],
    }
    s["added_ms"] = {
        "handshake_p50": w["handshake_p50_ms"] - wo["handshake_p50_ms"],
        "handshake_p99": w["handshake_p99_ms"] - wo["handshake_p99_ms"],
        "handshake_p50_pairs": [
            round((percentile(b["handshake_us"], 50) - percentile(a["handshake_us"], 50)) / 1000, 3)
            for a, b in pairs
        ],
    }
    gp = by("with")
    conns = sum(r["connections_total"] for r in gp)
    packets = sum(r["stats"].get("packets", 0) for r in gp)
    wrk_conns = sum(r["wrk"]["connections"] for r in gp)
    hs_conns = sum(r["hs_phase"]["connections"] for r in gp)
    s["govpass"] = {
        "connections": conns,
        "packets_queued": packets,
        "packets_per_connection": packets / conns if conns else float("nan"),
        "queue_dropped": sum(r["stats"].get("queue_dropped", 0) for r in gp),
        "user_dropped": sum(r["stats"].get("user_dropped", 0) for r in gp),
        "cpu_s": sum(r["cpu_s"] for r in gp),
        "cpu_s_per_1000_conn": 1000 * sum(r["cpu_s"] for r in gp) / wrk_conns,
        "cpu_s_per_1000_conn_rounds": [
            round(1000 * r["cpu_s"] / r["wrk"]["connections"], 3) for r in gp
        ],
        "wrk_connections": wrk_conns,
        # Share of the new connections whose ClientHello govpass actually split.
        "split_share_handshake_phase": sum(r["hs_phase"]["splits"] for r in gp) / hs_conns,
        "split_share_conn_phase": sum(r["wrk_phase"]["splits"] for r in gp) / wrk_conns,
        # ... of which the kernel split made (the hello never went to a worker)
        "kernel_split_share_conn_phase": sum(r["wrk_phase"].get("kernel_splits", 0) for r in gp)
        / wrk_conns,
        "fail_open": merge_counts(r["stats"].get("fail_open", {}) for r in gp),
        "callback_errors": sum(r["stats"].get("callback_errors", 0) for r in gp),
        "inject_errors": sum(r["stats"].get("inject_errors", 0) for r in gp),
    }
    return s


def merge_counts(dicts: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return {k: v for k, v in out.items() if v}
