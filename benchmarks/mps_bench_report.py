# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure part of the MPS benchmark: ideal speedup, aggregation of client reports, verdicts, tables, plot.

Nothing here touches a GPU or a process: mps_benchmark.py feeds it what the clients reported, and the unit
tests (tests/unit/benchmarks/) feed it made-up reports. Standard library only, except matplotlib in plot().

Vocabulary
- A *launch* is one unit of client work, timed from submit to completion (the client synchronizes after each):
  one spin kernel, one 4096x4096 matmul, or one pass of the memory-bound copy.
- A *run* is N clients working at once for a fixed time after a common start instant; a *repeat* is one run of a
  (workload, mode, N) configuration. Figures are medians over repeats.
- *ts* is MPS off (the GPU time-slices between processes), *mps* is MPS on.
"""

from __future__ import annotations

import math

MODES = ("ts", "mps")
MODE_NAMES = {"ts": "time-slicing (MPS off)", "mps": "MPS on"}

# A difference smaller than this (or than the spread between repeats, if larger) is called "no difference".
NOISE_FLOOR = 0.05


# --- arithmetic -----------------------------------------------------------------------------------------------

def median(values):
    """Median of a non-empty sequence of numbers (mean of the two middle values for an even count)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("median of no values")
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[mid])
    return (ordered[mid - 1] + ordered[mid]) / 2.0


def percentile(values, fraction):
    """Nearest-rank percentile (fraction in [0, 1]) of a non-empty sequence."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    rank = max(1, int(math.ceil(fraction * len(ordered))))
    return float(ordered[min(rank, len(ordered)) - 1])


def saturation_clients(sm_count, blocks_per_client):
    """How many clients fill the SMs when each launches `blocks_per_client` blocks of one SM each."""
    if sm_count <= 0 or blocks_per_client <= 0:
        raise ValueError("SM count and blocks per client must be positive (got %r, %r)" % (sm_count, blocks_per_client))
    return float(sm_count) / float(blocks_per_client)


def ideal_speedup(n_clients, sm_count, blocks_per_client=None):
    """Best aggregate throughput of N concurrent clients, relative to one client alone.

    A client whose launch uses `blocks_per_client` SMs (one block each: the spin kernel's blocks are sized so
    that one fills an SM) leaves the rest idle; MPS can fill them with other clients' blocks, so N clients can
    go N times as fast, until the SMs are full: min(N, SMs / blocks). Time-slicing runs one process at a time,
    so its ideal stays 1. A workload that fills the GPU by itself (blocks_per_client None, or >= SMs) has
    nothing left to share: its ideal is 1 whatever N.
    """
    if n_clients < 1:
        raise ValueError("need at least one client (got %r)" % n_clients)
    if blocks_per_client is None:
        return 1.0
    return max(1.0, min(float(n_clients), saturation_clients(sm_count, blocks_per_client)))


def aggregate_run(reports, duration):
    """One run of N clients -> throughput and latency.

    Each report is what a client sent back: {"pid", "count": launches completed inside the window,
    "latency_ms": [per launch], "start_delay_ms": how late it started, "check": "ok" or what was wrong}.
    Throughput is all launches completed inside the common window over its length. A launch still running when
    the window closes is not counted; that undercounts by at most one launch per client (under time-slicing,
    by about one in all), well under 1% of a one-second run. (A per-client rate between first and last
    completion would be wrong: time-slicing serves a client in bursts, and a burst of two launches 2 ms apart
    is not a rate of 500/s.) Per-client latency is each client's median launch latency; the run gives the
    median and the worst of those, and the p95 over every launch.
    """
    if not reports:
        raise ValueError("a run needs at least one client report")
    if duration <= 0:
        raise ValueError("the window must be longer than zero (got %r)" % duration)
    counts = [int(r.get("count", 0)) for r in reports]
    medians, every = [], []
    for report in reports:
        latencies = report.get("latency_ms") or []
        if latencies:
            medians.append(median(latencies))
            every.extend(latencies)
    failed = [r.get("pid") for r in reports if r.get("check", "ok") != "ok"]
    return {
        "clients": len(reports),
        "throughput": sum(counts) / float(duration),
        "launches": sum(counts),
        "client_counts": counts,
        "latency_p50_ms": median(medians) if medians else None,
        "latency_worst_client_ms": max(medians) if medians else None,
        "latency_p95_ms": percentile(every, 0.95) if every else None,
        "start_skew_ms": max(float(r.get("start_delay_ms", 0.0)) for r in reports),
        "fairness": (min(counts) / float(max(counts))) if max(counts) > 0 else None,
        "checks_failed": failed,
    }


def summarize(runs):
    """Runs -> {(workload, mode, n): medians over repeats, with the spread of the throughput}.

    `runs` are dicts {"workload", "mode", "n", "repeat", "result": aggregate_run(...)}; a run without a
    result (it failed) is counted in "failed_repeats" and left out of the medians.
    """
    groups = {}
    for run in runs:
        key = (run["workload"], run["mode"], int(run["n"]))
        groups.setdefault(key, []).append(run)
    summary = {}
    for key, group in groups.items():
        good = [r["result"] for r in group if r.get("result")]
        entry = {"repeats": len(good), "failed_repeats": len(group) - len(good)}
        if good:
            tput = [g["throughput"] for g in good]
            entry.update({
                "throughput": median(tput),
                "throughput_min": min(tput),
                "throughput_max": max(tput),
                "spread": (max(tput) - min(tput)) / median(tput) if median(tput) > 0 else 0.0,
            })
            for field in ("latency_p50_ms", "latency_worst_client_ms", "latency_p95_ms", "start_skew_ms",
                          "fairness"):
                values = [g[field] for g in good if g.get(field) is not None]
                entry[field] = median(values) if values else None
            entry["checks_failed"] = sorted(set(p for g in good for p in g.get("checks_failed", [])))
        summary[key] = entry
    return summary


def compare(summary, workloads, sm_count):
    """The table: one row per (workload, N) with both modes side by side.

    `workloads` maps a workload name to {"blocks": blocks per launch or None (fills the GPU), "unit": ...,
    "unit_per_launch": ...}. Ratios: mps_vs_ts = MPS / time-slicing at the same N; *_scaling = the mode's
    throughput at N over the same mode with one client. Efficiency = mps_vs_ts / ideal.
    """
    rows = []
    for name, info in workloads.items():
        ns = sorted(set(n for (w, _m, n) in summary if w == name))
        base = {}
        for mode in MODES:
            single = summary.get((name, mode, 1), {})
            base[mode] = single.get("throughput")
        for n in ns:
            ts = summary.get((name, "ts", n), {})
            mps = summary.get((name, "mps", n), {})
            row = {
                "workload": name,
                "n": n,
                "blocks_per_client": info.get("blocks"),
                "ideal": ideal_speedup(n, sm_count, info.get("blocks")),
                "sm_fill": (n * info["blocks"] / float(sm_count)) if info.get("blocks") else None,
            }
            for mode, entry in (("ts", ts), ("mps", mps)):
                row[mode] = entry.get("throughput")
                row[mode + "_spread"] = entry.get("spread")
                row[mode + "_latency_p50_ms"] = entry.get("latency_p50_ms")
                row[mode + "_latency_worst_ms"] = entry.get("latency_worst_client_ms")
                row[mode + "_latency_p95_ms"] = entry.get("latency_p95_ms")
                row[mode + "_repeats"] = entry.get("repeats", 0)
                row[mode + "_scaling"] = _ratio(entry.get("throughput"), base[mode])
                if info.get("unit_per_launch") and entry.get("throughput") is not None:
                    row[mode + "_rate"] = entry["throughput"] * info["unit_per_launch"]
                else:
                    row[mode + "_rate"] = None
            row["mps_vs_ts"] = _ratio(row["mps"], row["ts"])
            row["efficiency"] = _ratio(row["mps_vs_ts"], row["ideal"])
            rows.append(row)
    return rows


def _ratio(a, b):
    if a is None or b is None or b <= 0:
        return None
    return float(a) / float(b)


# --- plain words ----------------------------------------------------------------------------------------------

def classify(row, floor=NOISE_FLOOR):
    """'helps', 'no difference' or 'costs' for one row, against the noise of its repeats."""
    ratio = row.get("mps_vs_ts")
    if ratio is None:
        return "not measured"
    noise = max(floor, row.get("ts_spread") or 0.0, row.get("mps_spread") or 0.0)
    if ratio >= 1.0 + noise:
        return "helps"
    if ratio <= 1.0 - noise:
        return "costs"
    return "no difference"


def verdicts(rows, workloads, sm_count):
    """Sentences for the report: where MPS helped, by how much against the ideal, and where it did not help."""
    lines = []
    for name, info in workloads.items():
        mine = [r for r in rows if r["workload"] == name and r.get("mps_vs_ts") is not None]
        if not mine:
            lines.append("%s: not measured in both modes." % name)
            continue
        blocks = info.get("blocks")
        if blocks:
            sat = saturation_clients(sm_count, blocks)
            under = [r for r in mine if r["n"] > 1 and r["n"] <= sat]
            over = [r for r in mine if r["n"] > sat]
            if under:
                lines.append("%s (%d blocks per client, %d SMs): MPS helps where the SMs have room: %s." % (
                    name, blocks, sm_count, "; ".join(
                        "N=%d x%.2f of an ideal x%.2f (%.0f%%)" % (
                            r["n"], r["mps_vs_ts"], r["ideal"], 100.0 * r["efficiency"]) for r in under)))
            if over:
                # Compare with the largest N that still fit: what did the extra clients buy?
                ref = max(under or [r for r in mine if r["n"] <= sat] or [mine[0]], key=lambda r: r["n"])
                lines.append(
                    "%s: past SM saturation (%.2f clients fill the %d SMs) MPS has no room left to give: %s." % (
                        name, sat, sm_count, "; ".join(
                            "N=%d x%.2f (ideal x%.2f), throughput x%s of N=%d, p50 latency %s ms against %s ms" % (
                                r["n"], r["mps_vs_ts"], r["ideal"], _fmt(_ratio(r.get("mps"), ref.get("mps"))),
                                ref["n"], _fmt(r.get("mps_latency_p50_ms")), _fmt(ref.get("mps_latency_p50_ms")))
                            for r in over)))
        else:
            kinds = set(classify(r) for r in mine if r["n"] > 1)
            ratios = [r["mps_vs_ts"] for r in mine if r["n"] > 1] or [r["mps_vs_ts"] for r in mine]
            what = info.get("label") or name
            why = info.get("fills") or "one client already fills the GPU"
            if kinds <= {"no difference"}:
                verdict = "MPS does not help (no difference beyond noise)"
            elif "costs" in kinds and "helps" not in kinds:
                verdict = "MPS costs throughput here"
            elif "helps" in kinds and "costs" not in kinds:
                verdict = "MPS gains a little here (fewer context switches between the processes)"
            else:
                verdict = "mixed: no consistent effect"
            lines.append("%s: %s; %s: MPS/time-slicing x%.2f to x%.2f over N=%s." % (
                what, why, verdict, min(ratios), max(ratios),
                ",".join(str(r["n"]) for r in mine if r["n"] > 1) or "1"))
    return lines


def _fmt(value, digits=2):
    if value is None:
        return "-"
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return "-"
    return ("%%.%df" % digits) % value


# --- rendering ------------------------------------------------------------------------------------------------

TABLE_COLUMNS = (
    ("workload", "workload"), ("N", "n"), ("time-slicing launches/s", "ts"), ("MPS launches/s", "mps"),
    ("MPS / time-slicing", "mps_vs_ts"), ("ideal", "ideal"), ("of ideal", "efficiency"),
    ("TS p50 latency ms", "ts_latency_p50_ms"), ("MPS p50 latency ms", "mps_latency_p50_ms"),
    ("MPS worst-client ms", "mps_latency_worst_ms"), ("verdict", "verdict"),
)


def _cell(row, key):
    value = row.get(key)
    if key == "verdict":
        return classify(row)
    if key == "efficiency":
        return "-" if value is None else "%.0f%%" % (100.0 * value)
    if key in ("mps_vs_ts", "ideal"):
        return "-" if value is None else "x%.2f" % value
    if key in ("ts", "mps"):
        return _fmt(value, 1)
    if isinstance(value, float):
        return _fmt(value)
    return str(value)


def render_markdown(result):
    """The whole report as markdown: context, the table, the verdicts, the checks and how to reproduce it."""
    env, rows = result["environment"], result["rows"]
    out = ["# MPS benchmark: %s" % env.get("gpu_name", "GPU"), ""]
    out.append("- GPU: %s, %s SMs, compute capability %s, driver %s; backend %s" % (
        env.get("gpu_name", "?"), env.get("sm_count", "?"), env.get("compute_capability", "?"),
        env.get("driver", "?"), env.get("backend", "?")))
    out.append("- Date: %s; host %s; command: `%s`" % (env.get("date", "?"), env.get("host", "?"),
                                                       env.get("command", "?")))
    cfg = result["config"]
    out.append("- Clients N = %s, separate processes; %s s per run after a common start instant; median of %s "
               "repeats; warm-up before every run." % (",".join(str(n) for n in cfg["ns"]), cfg["duration_s"],
                                                       cfg["repeats"]))
    for name, info in result["workloads"].items():
        out.append("- `%s`: %s" % (name, info.get("description", "")))
    out.append("")
    out.append("| " + " | ".join(c for c, _key in TABLE_COLUMNS) + " |")
    out.append("|" + "|".join("---" for _unused in TABLE_COLUMNS) + "|")
    for row in rows:
        out.append("| " + " | ".join(_cell(row, key) for _title, key in TABLE_COLUMNS) + " |")
    out.append("")
    out.append("Throughput is the sum of the clients' launch rates; *ideal* is min(N, SMs / blocks per client) for "
               "the low-occupancy kernel and 1 for workloads that fill the GPU; *of ideal* is (MPS / time-slicing) / "
               "ideal. A ratio within the spread of the repeats (at least %d%%) is called *no difference*."
               % int(NOISE_FLOOR * 100))
    out.append("")
    out.append("## What MPS buys here, and where it does not help")
    out.append("")
    for line in result["verdicts"]:
        out.append("- " + line)
    out.append("")
    out.append("## Checks")
    out.append("")
    for line in result.get("check_lines", []):
        out.append("- " + line)
    problems = result.get("problems") or []
    if problems:
        out.append("")
        out.append("## Problems")
        out.append("")
        for line in problems:
            out.append("- " + line)
    out.append("")
    return "\n".join(out)


def render_summary(result):
    """Short fixed-width table for the end of the console output (the part a remote caller sees)."""
    env = result["environment"]
    head = "MPS benchmark: %s, %s SMs, driver %s, backend %s, %s s/run, median of %s" % (
        env.get("gpu_name", "?"), env.get("sm_count", "?"), env.get("driver") or "?", env.get("backend", "?"),
        result["config"]["duration_s"], result["config"]["repeats"])
    lines = [head, "%-7s %3s %10s %10s %7s %6s %5s %8s %8s  %s" % (
        "work", "N", "TS/s", "MPS/s", "MPS/TS", "ideal", "eff", "TS p50", "MPS p50", "verdict")]
    for r in result["rows"]:
        lines.append("%-7s %3d %10s %10s %7s %6s %5s %8s %8s  %s" % (
            r["workload"][:7], r["n"], _fmt(r.get("ts"), 1), _fmt(r.get("mps"), 1),
            "-" if r.get("mps_vs_ts") is None else "x%.2f" % r["mps_vs_ts"], "x%.2f" % r["ideal"],
            "-" if r.get("efficiency") is None else "%.0f%%" % (100 * r["efficiency"]),
            _fmt(r.get("ts_latency_p50_ms")), _fmt(r.get("mps_latency_p50_ms")), classify(r)))
    lines.append("(launches/s; p50 = median per-client launch latency in ms)")
    for line in result["verdicts"]:
        lines.append("* " + line)
    for line in result.get("check_lines", []):
        lines.append("check: " + line)
    for line in result.get("notes") or []:
        lines.append("note: " + line)
    for line in result.get("problems") or []:
        lines.append("PROBLEM: " + line)
    return "\n".join(lines)


def _n_axis(axes, ns, title, ylabel):
    """Title, labels, grid and legend of a plot against N (log2 axis, a tick at every N)."""
    axes.set_title(title, fontsize=10)
    axes.set_xscale("log", base=2)
    axes.set_xticks(ns)
    axes.set_xticklabels([str(n) for n in ns])
    axes.set_xlabel("concurrent clients N")
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)


def plot(result, path):
    """PNG: per workload, aggregate throughput vs N for both modes (with the ideal), and MPS p50 latency.

    Returns None when written, else why not (matplotlib missing): the rest of the report does not depend on it.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # the benchmark still writes JSON and markdown
        return "matplotlib is not available (%s): no PNG" % exc
    rows, workloads = result["rows"], result["workloads"]
    names = [w for w in workloads if any(r["workload"] == w for r in rows)]
    if not names:
        return "nothing to plot"
    fig, axes = plt.subplots(2, len(names), figsize=(5.2 * len(names), 8.0), squeeze=False)
    for col, name in enumerate(names):
        mine = sorted((r for r in rows if r["workload"] == name), key=lambda r: r["n"])
        ns = [r["n"] for r in mine]
        top, bottom = axes[0][col], axes[1][col]
        base = next((r["ts"] for r in mine if r["n"] == 1 and r.get("ts")), None)
        for mode, style in (("ts", "o-"), ("mps", "s-")):
            pts = [(r["n"], r[mode] / base) for r in mine if r.get(mode) is not None and base]
            if pts:
                top.plot([p[0] for p in pts], [p[1] for p in pts], style, label=MODE_NAMES[mode])
        top.plot(ns, [r["ideal"] for r in mine], "k--", linewidth=1, label="ideal with MPS")
        info = workloads[name]
        if info.get("blocks"):
            sat = saturation_clients(result["environment"]["sm_count"], info["blocks"])
            top.axvline(sat, color="grey", linestyle=":", linewidth=1)
            top.text(sat, 0.98, " SMs full", transform=top.get_xaxis_transform(), va="top", fontsize=8,
                     color="grey")
        highest = max([r["ideal"] for r in mine] + [r[m] / base for r in mine for m in MODES if r.get(m) and base])
        top.set_ylim(0, max(1.2, highest * 1.15))
        _n_axis(top, ns, "%s: throughput vs one client alone" % name, "aggregate throughput (x)")
        for mode, style, color in (("ts", "o", "C0"), ("mps", "s", "C1")):
            pts = [(r["n"], r[mode + "_latency_p50_ms"]) for r in mine if r.get(mode + "_latency_p50_ms")]
            if pts:
                bottom.plot([p[0] for p in pts], [p[1] for p in pts], style + "-", color=color,
                            label=MODE_NAMES[mode] + ", median client")
            pts = [(r["n"], r[mode + "_latency_worst_ms"]) for r in mine if r.get(mode + "_latency_worst_ms")]
            if pts:
                bottom.plot([p[0] for p in pts], [p[1] for p in pts], style + ":", color=color, alpha=0.6,
                            label=MODE_NAMES[mode] + ", worst client")
        bottom.set_ylim(bottom=0)
        _n_axis(bottom, ns, "%s: per-client launch latency (client medians)" % name, "ms per launch")
    env = result["environment"]
    fig.suptitle("NVIDIA MPS vs time-slicing on %s (%s SMs)" % (env.get("gpu_name", "GPU"), env.get("sm_count")),
                 fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
