# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure part of the noisy-neighbour benchmark: latency statistics, the table, the criterion, the class
evidence, markdown, the console summary and the plot.

Nothing here touches a GPU or a process: mps_qos_benchmark.py feeds it what the clients reported, the unit tests
(tests/unit/benchmarks/) feed it made-up reports. Standard library only, except matplotlib in plot(). Percentiles
and medians are mps_bench_report's (the MPS benchmark's), so that both benchmarks compute them alike.

Vocabulary
- the *latency client* launches small kernels (16 blocks by default) and waits for each; its launch latency is
  what a latency-critical service sees. The *neighbours* launch kernels that fill every SM, back to back.
- a *mode* is how they share the GPU: ts (MPS off: time-slicing), mps (MPS, no limits), qos (MPS, every client in
  its QoS class), and the two halves of qos: prio (the neighbours at the batch class's priority only) and threads
  (the neighbours at its thread limit only).
- *alone* is the latency client with no neighbour (N = 0).
"""

from __future__ import annotations

import math

from mps_bench_report import median, percentile  # beside this file

MODES = ("ts", "mps", "prio", "threads", "qos")
MODE_NAMES = {
    "ts": "time-slicing (MPS off)",
    "mps": "MPS, no limits",
    "prio": "MPS, neighbours at the batch priority only",
    "threads": "MPS, neighbours at the batch thread limit only",
    "qos": "MPS, QoS classes",
}
QUANTILES = tuple(range(0, 101))


def latency_stats(latencies):
    """{count, p50, p99, max, mean, quantiles (0..100 %)} of launch latencies in ms; None when there are none."""
    if not latencies:
        return None
    ordered = sorted(latencies)
    return {"count": len(ordered), "p50_ms": percentile(ordered, 0.50), "p99_ms": percentile(ordered, 0.99),
            "max_ms": float(ordered[-1]), "mean_ms": sum(ordered) / float(len(ordered)),
            "quantiles_ms": [percentile(ordered, q / 100.0) if q else float(ordered[0]) for q in QUANTILES]}


def aggregate_run(latency_report, neighbour_reports, duration, fill_solo_ms=None):
    """One run: the latency client's report and its neighbours' -> the figures of the run.

    Neighbour throughput is fill launches completed in the window over its length; "gpu" expresses it in GPUs'
    worth of fill work (launches/s x ms per launch alone / 1000: 1.0 is one GPU kept busy).
    """
    if duration <= 0:
        raise ValueError("the window must be longer than zero (got %r)" % duration)
    counts = [int(r.get("count", 0)) for r in neighbour_reports]
    throughput = sum(counts) / float(duration)
    failed = [r.get("pid") for r in [latency_report] + list(neighbour_reports) if r.get("check", "ok") != "ok"]
    return {
        "latency": latency_stats(latency_report.get("latency_ms") or []),
        "neighbours": len(neighbour_reports),
        "neighbour_counts": counts,
        "neighbour_throughput": throughput,
        "neighbour_gpu": throughput * fill_solo_ms / 1000.0 if fill_solo_ms else None,
        "start_skew_ms": max([float(r.get("start_delay_ms", 0.0)) for r in [latency_report] + list(neighbour_reports)]),
        "checks_failed": failed,
    }


def rows(runs, ns, modes, fill_solo_ms=None):
    """The table: per (mode, N), latency percentiles over every launch of every repeat, the spread of the
    per-repeat p99, the neighbours' median throughput, and the ratios.

    `runs`: [{"mode", "n", "repeat", "latency_ms": [...] (every launch), "result": aggregate_run(...) or None}].
    p99_vs_alone: against the same mode with no neighbour; p99_vs_best_alone: against the lowest p99 alone of any
    mode (the client's best with the GPU to itself). neighbour_vs_unlimited: against mode mps at the same N.
    """
    table = []
    by_key = {}
    for run in runs:
        by_key.setdefault((run["mode"], int(run["n"])), []).append(run)
    for mode in modes:
        for n in ns:
            group = [r for r in by_key.get((mode, n), []) if r.get("result")]
            row = {"mode": mode, "n": n, "repeats": len(group),
                   "failed_repeats": len(by_key.get((mode, n), [])) - len(group)}
            every = [x for r in group for x in r.get("latency_ms") or []]
            stats = latency_stats(every)
            row["latency"] = stats
            row["p99_repeats_ms"] = [r["result"]["latency"]["p99_ms"] for r in group if r["result"].get("latency")]
            tputs = [r["result"]["neighbour_throughput"] for r in group]
            row["neighbour_throughput"] = median(tputs) if tputs and n else None
            row["neighbour_gpu"] = (row["neighbour_throughput"] * fill_solo_ms / 1000.0
                                    if row["neighbour_throughput"] is not None and fill_solo_ms else None)
            row["checks_failed"] = sorted(set(p for r in group for p in r["result"].get("checks_failed", [])))
            table.append(row)
    alone = dict((r["mode"], r["latency"]["p99_ms"]) for r in table if r["n"] == 0 and r["latency"])
    best = min(alone.values()) if alone else None
    unlimited = dict((r["n"], r["neighbour_throughput"]) for r in table if r["mode"] == "mps")
    for row in table:
        p99 = row["latency"]["p99_ms"] if row["latency"] else None
        row["p99_vs_alone"] = _ratio(p99, alone.get(row["mode"]))
        row["p99_vs_best_alone"] = _ratio(p99, best)
        row["neighbour_vs_unlimited"] = _ratio(row["neighbour_throughput"], unlimited.get(row["n"]))
    return table


def _ratio(a, b):
    if a is None or b is None or b <= 0:
        return None
    return float(a) / float(b)


def criterion(table, limit, mode="qos"):
    """Whether the latency client's p99 beside the most neighbours, in `mode`, is at most `limit` x its best p99
    alone (the lowest of every mode's, so that no mode is judged against a slower baseline than the client can
    have). {"mode", "n", "limit", "p99_ms", "alone_p99_ms", "ratio", "passed" (None: not measured)}."""
    mine = [r for r in table if r["mode"] == mode and r["latency"]]
    alone = [r["latency"]["p99_ms"] for r in table if r["n"] == 0 and r["latency"]]
    result = {"mode": mode, "limit": limit, "n": None, "p99_ms": None, "alone_p99_ms": min(alone) if alone else None,
              "ratio": None, "passed": None}
    if not mine or not alone:
        return result
    top = max(mine, key=lambda r: r["n"])
    if top["n"] == 0:
        return result
    result.update(n=top["n"], p99_ms=top["latency"]["p99_ms"], ratio=top["p99_vs_best_alone"],
                  neighbour_throughput=top["neighbour_throughput"], neighbour_vs_unlimited=top["neighbour_vs_unlimited"])
    result["passed"] = result["ratio"] is not None and result["ratio"] <= limit + 1e-9
    return result


def allowed_sms(threads, sm_count):
    """The SMs a client may occupy at this active thread percentage (None: no limit of its own): ceil(p x SMs)."""
    if threads is None:
        return sm_count
    return int(math.ceil(float(threads) * sm_count / 100.0 - 1e-9))


def class_check(seen, sm_count, tolerance=2):
    """Whether what a client reported (its inspect answer) fits the thread percentage in its environment.

    seen: {"mps_env": {...}, "sms_used": N or None, ...}. Returns (ok, sentence). A client whose blocks ran on
    more SMs than its percentage allows (plus `tolerance`, for the rounding of SMs to pairs) did not get its class.
    """
    env = seen.get("mps_env") or {}
    raw = env.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
    try:
        threads = float(raw) if raw is not None else None
    except ValueError:
        return False, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=%r is not a number" % raw
    used = seen.get("sms_used")
    allowed = allowed_sms(threads, sm_count)
    if used is None:
        return True, "SMs used not measurable with this backend (SM count CUDA gives: %s)" % seen.get(
            "sm_count_attribute")
    if used > allowed + tolerance:
        return False, "its blocks ran on %d SMs, more than the %d that %s %% of %d allows" % (
            used, allowed, _num(threads), sm_count)
    return True, "blocks on %d SMs of %d (%s)" % (used, sm_count, "limit %s %%: at most %d" % (_num(threads), allowed)
                                                  if threads is not None else "no limit of its own")


def _num(value):
    return "-" if value is None else ("%g" % value)


def _fmt(value, digits=2):
    if value is None:
        return "-"
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return "-"
    return ("%%.%df" % digits) % value


def _x(value):
    return "-" if value is None else "x%.2f" % value


TABLE_COLUMNS = ("mode", "neighbours", "latency p50 ms", "latency p99 ms", "latency max ms", "p99 / alone",
                 "p99 / best alone", "launches", "neighbour launches/s", "neighbours, GPUs of work",
                 "neighbours / no limits")


def table_lines(table):
    out = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "|".join("---" for _c in TABLE_COLUMNS) + "|"]
    for r in table:
        lat = r["latency"] or {}
        out.append("| " + " | ".join([
            MODE_NAMES.get(r["mode"], r["mode"]), str(r["n"]), _fmt(lat.get("p50_ms"), 3), _fmt(lat.get("p99_ms"), 3),
            _fmt(lat.get("max_ms"), 3), _x(r["p99_vs_alone"]), _x(r["p99_vs_best_alone"]), str(lat.get("count", "-")),
            _fmt(r["neighbour_throughput"], 1) if r["n"] else "-", _fmt(r["neighbour_gpu"]) if r["n"] else "-",
            _x(r["neighbour_vs_unlimited"]) if r["n"] else "-"]) + " |")
    return out


def evidence_lines(evidence):
    """The class evidence as a table: per mode and client, what it asked (env) and what it got."""
    out = ["| mode | client | class | CUDA_MPS_ACTIVE_THREAD_PERCENTAGE | CUDA_MPS_CLIENT_PRIORITY | "
           "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT | SM count CUDA gives | SMs its blocks ran on | free MiB | got its class |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for item in evidence:
        env = item.get("mps_env") or {}
        out.append("| %s | %s (pid %s) | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            item["mode"], item["role"], item.get("pid"), item.get("class") or "-",
            env.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "-"), env.get("CUDA_MPS_CLIENT_PRIORITY", "-"),
            env.get("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "-"), item.get("sm_count_attribute", "-"),
            "-" if item.get("sms_used") is None else item["sms_used"], item.get("mem_free_mib", "-"),
            ("yes: " if item.get("class_ok") else "NO: ") + item.get("class_line", "")))
    return out


def criterion_line(crit):
    if not crit.get("limit"):
        return "criterion: none asked (--criterion 0)"
    if crit["passed"] is None:
        return "criterion: not measured (mode %s with neighbours and a latency client alone are needed)" % crit["mode"]
    return ("criterion: with %d neighbours in the batch class, the latency client's p99 is %.3f ms = x%.2f its best "
            "p99 alone (%.3f ms): %s (at most x%.2f); the neighbours ran %s launches/s, x%s of their throughput "
            "without limits" % (crit["n"], crit["p99_ms"], crit["ratio"], crit["alone_p99_ms"],
                                "PASSED" if crit["passed"] else "FAILED", crit["limit"],
                                _fmt(crit.get("neighbour_throughput"), 1),
                                _fmt(crit.get("neighbour_vs_unlimited"))))


def render_markdown(result):
    env, cfg = result["environment"], result["config"]
    out = ["# Noisy neighbours on a shared GPU: %s" % env.get("gpu_name", "GPU"), ""]
    out.append("- GPU: %s, %s SMs, driver %s; backend %s" % (env.get("gpu_name", "?"), env.get("sm_count", "?"),
                                                             env.get("driver") or "?", env.get("backend", "?")))
    out.append("- Date: %s; host %s; command: `%s`" % (env.get("date", "?"), env.get("host", "?"),
                                                       env.get("command", "?")))
    out.append("- Latency client: %s blocks x 1024 threads per launch, %s ms alone; each neighbour: %s blocks (one per "
               "SM), %s ms alone. Neighbours N = %s, %s s per run after a common start, %s repeats, percentiles over "
               "every launch of every repeat." % (
                   cfg.get("latency_blocks"), _fmt(cfg.get("latency_solo_ms"), 3), cfg.get("fill_blocks"),
                   _fmt(cfg.get("fill_solo_ms")), ",".join(str(n) for n in cfg["ns"]), cfg["duration_s"],
                   cfg["repeats"]))
    for name, cls in sorted((result.get("classes") or {}).items()):
        out.append("- Class `%s` (%s): %s" % (name, cls.get("path", "-"), ", ".join(
            "%s=%s" % kv for kv in sorted(cls["environment"].items())) or "no variable"))
    out += ["", "## The latency client and its neighbours", ""] + table_lines(result["rows"])
    out += ["", "*p99 / alone*: against the same mode with no neighbour; *p99 / best alone*: against the lowest p99 "
            "alone of any mode. *GPUs of work*: neighbour launches/s x ms per launch alone / 1000.", ""]
    out += ["## What it shows", "", "- " + criterion_line(result["criterion"])]
    for line in result.get("verdicts") or []:
        out.append("- " + line)
    out += ["", "## The classes reach the clients", ""]
    out += ["What each client asked for (its environment) and what it got (the SM count CUDA gives it, the SMs a wide "
            "probe kernel's blocks ran on, free memory), measured by the client itself:", ""]
    out += evidence_lines(result.get("evidence") or [])
    daemon = result.get("daemon_evidence") or []
    if daemon:
        out += ["", "What the MPS control daemon and its servers said:", ""]
        out += ["- " + line for line in daemon]
    out += ["", "## Checks", ""] + ["- " + line for line in result.get("check_lines") or []]
    if result.get("problems"):
        out += ["", "## Problems", ""] + ["- " + line for line in result["problems"]]
    out.append("")
    return "\n".join(out)


def render_summary(result):
    env = result["environment"]
    lines = ["Noisy neighbours: %s, %s SMs, driver %s, backend %s, %s s/run, %s repeats" % (
        env.get("gpu_name", "?"), env.get("sm_count", "?"), env.get("driver") or "?", env.get("backend", "?"),
        result["config"]["duration_s"], result["config"]["repeats"])]
    header = ("mode", "N", "p50 ms", "p99 ms", "max ms", "p99/alone", "p99/best", "nbr/s", "nbr/nolim")
    lines.append("%-8s %3s %9s %9s %9s %8s %8s %10s %7s" % header)
    for r in result["rows"]:
        lat = r["latency"] or {}
        lines.append("%-8s %3d %9s %9s %9s %8s %8s %10s %7s" % (
            r["mode"], r["n"], _fmt(lat.get("p50_ms"), 3), _fmt(lat.get("p99_ms"), 3), _fmt(lat.get("max_ms"), 3),
            _x(r["p99_vs_alone"]), _x(r["p99_vs_best_alone"]), _fmt(r["neighbour_throughput"], 1) if r["n"] else "-",
            _x(r["neighbour_vs_unlimited"]) if r["n"] else "-"))
    lines.append(criterion_line(result["criterion"]))
    for line in result.get("verdicts") or []:
        lines.append("* " + line)
    for item in result.get("evidence") or []:
        if item["mode"] == "qos" or not item.get("class_ok"):
            env_text = " ".join("%s=%s" % (k.replace("CUDA_MPS_", ""), v) for k, v in sorted(
                (item.get("mps_env") or {}).items()) if k != "CUDA_MPS_PIPE_DIRECTORY")
            lines.append("class: %s %s pid %s [%s] %s: %s" % (item["mode"], item["role"], item.get("pid"),
                                                              env_text or "-", "ok" if item.get("class_ok") else "NOT OK",
                                                              item.get("class_line", "")))
    for line in result.get("daemon_evidence") or []:
        lines.append("daemon: " + line)
    for line in result.get("check_lines") or []:
        lines.append("check: " + line)
    for line in result.get("notes") or []:
        lines.append("note: " + line)
    for line in result.get("problems") or []:
        lines.append("PROBLEM: " + line)
    return "\n".join(lines)


def verdicts(table, ns):
    """Plain words: what each mode does to the latency client beside the most neighbours, and what it costs them."""
    lines = []
    top = max(ns) if ns else 0
    if not top:
        return lines
    at = dict((r["mode"], r) for r in table if r["n"] == top and r["latency"])
    for mode in MODES:
        row = at.get(mode)
        if not row:
            continue
        text = "%s, %d neighbours: latency p99 %s ms (x%s of the best alone)" % (
            MODE_NAMES[mode], top, _fmt(row["latency"]["p99_ms"], 3), _fmt(row["p99_vs_best_alone"]))
        if row["neighbour_vs_unlimited"] is not None and mode != "mps":
            text += ", neighbours at x%s of their throughput without limits" % _fmt(row["neighbour_vs_unlimited"])
        lines.append(text + ".")
    if "mps" in at and "ts" in at:
        worse = at["mps"]["latency"]["p99_ms"] > at["ts"]["latency"]["p99_ms"]
        lines.append("MPS without limits %s time-slicing for the latency client (p99 %s against %s ms)." % (
            "is worse than" if worse else "is not worse than", _fmt(at["mps"]["latency"]["p99_ms"], 3),
            _fmt(at["ts"]["latency"]["p99_ms"], 3)))
    return lines


def plot(result, path):
    """PNG: latency p99 (and p50) against the neighbours, per mode, with the 1.2x band; the neighbours' throughput;
    the latency distribution beside the most neighbours. Returns None when written, else why not."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return "matplotlib is not available (%s): no PNG" % exc
    table = result["rows"]
    modes = [m for m in MODES if any(r["mode"] == m and r["latency"] for r in table)]
    if not modes:
        return "nothing to plot"
    ns = sorted(set(r["n"] for r in table))
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    left, middle, right = axes
    for i, mode in enumerate(modes):
        mine = sorted((r for r in table if r["mode"] == mode and r["latency"]), key=lambda r: r["n"])
        color = "C%d" % i
        left.plot([r["n"] for r in mine], [r["latency"]["p99_ms"] for r in mine], "o-", color=color,
                  label=MODE_NAMES[mode] + ", p99")
        left.plot([r["n"] for r in mine], [r["latency"]["p50_ms"] for r in mine], ":", color=color, alpha=0.6)
        pts = [(r["n"], r["neighbour_throughput"]) for r in mine if r["n"] and r["neighbour_throughput"] is not None]
        if pts:
            middle.plot([p[0] for p in pts], [p[1] for p in pts], "s-", color=color, label=MODE_NAMES[mode])
        top = mine[-1] if mine and mine[-1]["n"] else None
        if top:
            q = top["latency"]["quantiles_ms"]
            right.plot(q, [x / 100.0 for x in QUANTILES], "-", color=color, label="%s, N=%d" % (mode, top["n"]))
    crit = result.get("criterion") or {}
    if crit.get("alone_p99_ms"):
        left.axhline(crit["alone_p99_ms"] * crit.get("limit", 1.2), color="k", linestyle="--", linewidth=1,
                     label="x%.1f the best p99 alone" % crit.get("limit", 1.2))
    left.set_yscale("log")
    left.set_xticks(ns)
    left.set_xlabel("neighbours filling the GPU")
    left.set_ylabel("latency client, ms per launch (solid p99, dotted p50)")
    left.set_title("latency client's p99 beside its neighbours", fontsize=10)
    middle.set_xticks([n for n in ns if n])
    middle.set_xlabel("neighbours")
    middle.set_ylabel("neighbour launches/s (all together)")
    middle.set_title("the neighbours' throughput", fontsize=10)
    right.set_xscale("log")
    right.set_xlabel("latency client, ms per launch")
    right.set_ylabel("fraction of launches")
    right.set_title("latency distribution beside the most neighbours", fontsize=10)
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    middle.set_ylim(bottom=0)
    env = result["environment"]
    fig.suptitle("Noisy neighbours under MPS on %s (%s SMs): QoS classes against no limits and time-slicing" % (
        env.get("gpu_name", "GPU"), env.get("sm_count")), fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
