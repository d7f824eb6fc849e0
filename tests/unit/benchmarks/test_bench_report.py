# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure part of the MPS benchmark (benchmarks/mps_bench_report.py): ideal speedup, aggregation, verdicts,
tables. No GPU, no process: made-up client reports with known answers."""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import mps_bench_report as report  # noqa: E402


# --- ideal speedup --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, sms, blocks, ideal", [
    # H100: 132 SMs, 16 blocks per client (SMs // 8): N clients fit until 8.25 clients.
    (1, 132, 16, 1.0),
    (4, 132, 16, 4.0),
    (8, 132, 16, 8.0),
    (16, 132, 16, 8.25),
    # One block per client: 16 clients are far from filling 132 SMs.
    (16, 132, 1, 16.0),
    # A100 (108 SMs) with 13 blocks: 8 clients use 104 SMs, 16 would need 208.
    (8, 108, 13, 8.0),
    (16, 108, 13, 108 / 13.0),
    # A client that uses more SMs than there are: no room for a second one, but never below 1.
    (4, 132, 200, 1.0),
    # Workloads that fill the GPU by themselves: nothing to share.
    (16, 132, None, 1.0),
    (1, 132, None, 1.0),
])
def test_ideal_speedup(n, sms, blocks, ideal):
    assert report.ideal_speedup(n, sms, blocks) == pytest.approx(ideal)


def test_saturation_clients():
    assert report.saturation_clients(132, 16) == pytest.approx(8.25)
    assert report.saturation_clients(132, 132) == pytest.approx(1.0)


@pytest.mark.parametrize("call", [
    lambda: report.ideal_speedup(0, 132, 16),
    lambda: report.saturation_clients(0, 16),
    lambda: report.saturation_clients(132, 0),
])
def test_ideal_rejects_nonsense(call):
    with pytest.raises(ValueError):
        call()


# --- statistics -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values, expected", [([3], 3.0), ([5, 1, 3], 3.0), ([4, 1, 3, 2], 2.5), ([2.0, 2.0], 2.0)])
def test_median(values, expected):
    assert report.median(values) == expected


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert report.percentile(values, 0.95) == 95.0
    assert report.percentile(values, 0.5) == 50.0
    assert report.percentile([7.0], 0.95) == 7.0
    with pytest.raises(ValueError):
        report.percentile([], 0.5)
    with pytest.raises(ValueError):
        report.median([])


# --- one run ---------------------------------------------------------------------------------------------------

def client(pid, count, latencies, delay=0.1, check="ok"):
    return {"pid": pid, "count": count, "latency_ms": latencies, "start_delay_ms": delay, "check": check}


def test_aggregate_run_sums_launches_over_the_window():
    reports = [client(1, 500, [2.0] * 500), client(2, 480, [2.1] * 480, delay=0.4)]
    run = report.aggregate_run(reports, 1.0)
    assert run["throughput"] == pytest.approx(980.0)
    assert run["launches"] == 980
    assert run["client_counts"] == [500, 480]
    assert run["latency_p50_ms"] == pytest.approx(2.05)  # median of the two clients' medians
    assert run["latency_worst_client_ms"] == pytest.approx(2.1)
    assert run["start_skew_ms"] == pytest.approx(0.4)
    assert run["fairness"] == pytest.approx(0.96)
    assert run["checks_failed"] == []


def test_aggregate_run_window_length_scales_throughput():
    reports = [client(1, 150, [2.0] * 150)]
    assert report.aggregate_run(reports, 0.3)["throughput"] == pytest.approx(500.0)


def test_aggregate_run_time_slicing_bursts_are_not_rates():
    """Under time-slicing a client may get two launches back to back and then nothing: it contributes its
    2 launches, not 1/2 ms. The run's throughput stays that of one client alone."""
    reports = [client(1, 2, [2.0, 2.0]), client(2, 250, [4.0] * 250), client(3, 248, [4.0] * 248)]
    run = report.aggregate_run(reports, 1.0)
    assert run["throughput"] == pytest.approx(500.0)
    assert run["fairness"] == pytest.approx(2 / 250.0)


def test_aggregate_run_p95_over_every_launch():
    reports = [client(1, 20, [1.0] * 19 + [50.0]), client(2, 20, [1.0] * 20)]
    run = report.aggregate_run(reports, 1.0)
    assert run["latency_p95_ms"] == 1.0  # 1 launch in 40 is slow: p95 does not see it
    reports = [client(1, 20, [1.0] * 10 + [50.0] * 10), client(2, 20, [1.0] * 20)]
    assert report.aggregate_run(reports, 1.0)["latency_p95_ms"] == 50.0


def test_aggregate_run_reports_wrong_results_and_starved_clients():
    reports = [client(7, 100, [2.0] * 100), client(8, 0, [], check="spin kernel output off by nan")]
    run = report.aggregate_run(reports, 1.0)
    assert run["checks_failed"] == [8]
    assert run["fairness"] == 0.0
    assert run["latency_p50_ms"] == 2.0  # the client without launches has no latency to give


def test_aggregate_run_rejects_empty_and_zero_window():
    with pytest.raises(ValueError):
        report.aggregate_run([], 1.0)
    with pytest.raises(ValueError):
        report.aggregate_run([client(1, 1, [1.0])], 0)


# --- repeats and the comparison ------------------------------------------------------------------------------

def run_record(workload, mode, n, repeat, throughput, latency=2.0):
    if throughput is None:
        return {"workload": workload, "mode": mode, "n": n, "repeat": repeat, "result": None, "error": "hung"}
    return {"workload": workload, "mode": mode, "n": n, "repeat": repeat, "result": {
        "throughput": throughput, "latency_p50_ms": latency, "latency_worst_client_ms": latency * 1.1,
        "latency_p95_ms": latency * 1.2, "start_skew_ms": 0.2, "fairness": 1.0, "checks_failed": []}}


def test_summarize_takes_medians_and_counts_failed_repeats():
    runs = [run_record("spin", "mps", 4, r, t) for r, t in ((1, 1900.0), (2, 2000.0), (3, 1950.0))]
    runs.append(run_record("spin", "mps", 4, 4, None))
    entry = report.summarize(runs)[("spin", "mps", 4)]
    assert entry["throughput"] == 1950.0
    assert entry["throughput_min"] == 1900.0 and entry["throughput_max"] == 2000.0
    assert entry["spread"] == pytest.approx(100.0 / 1950.0)
    assert entry["repeats"] == 3
    assert entry["failed_repeats"] == 1


def test_summarize_all_failed_has_no_throughput():
    entry = report.summarize([run_record("matmul", "ts", 2, 1, None)])[("matmul", "ts", 2)]
    assert entry == {"repeats": 0, "failed_repeats": 1}


WORKLOADS = {
    "spin": {"blocks": 16, "unit_per_launch": None, "label": "spin kernel (16 blocks per launch)"},
    "matmul": {"blocks": None, "unit_per_launch": 2 * 4096 ** 3 / 1e12, "label": "matmul 4096x4096 float32"},
}


def h100_like_runs():
    """What the H100 should roughly give: spin scales with MPS until 8.25 clients, time-slicing stays flat;
    matmul is the same either way."""
    single = 500.0
    runs = []
    for n in (1, 2, 4, 8, 16):
        mps = single * min(n, 8.25) * 0.97 if n > 1 else single
        for rep, jitter in ((1, 0.99), (2, 1.0), (3, 1.01)):
            runs.append(run_record("spin", "ts", n, rep, single * jitter, latency=2.0 * n))
            runs.append(run_record("spin", "mps", n, rep, mps * jitter, latency=2.0 * max(1.0, n / 8.25)))
            runs.append(run_record("matmul", "ts", n, rep, 330.0 * jitter, latency=3.0 * n))
            runs.append(run_record("matmul", "mps", n, rep, 331.0 * jitter, latency=3.0 * n))
    return runs


def test_compare_rows_ratios_ideal_and_efficiency():
    rows = report.compare(report.summarize(h100_like_runs()), WORKLOADS, 132)
    by = dict(((r["workload"], r["n"]), r) for r in rows)
    row = by[("spin", 4)]
    assert row["ts"] == pytest.approx(500.0)
    assert row["mps"] == pytest.approx(500.0 * 4 * 0.97)
    assert row["mps_vs_ts"] == pytest.approx(3.88)
    assert row["ideal"] == 4.0
    assert row["efficiency"] == pytest.approx(0.97)
    assert row["mps_scaling"] == pytest.approx(3.88)
    assert row["ts_scaling"] == pytest.approx(1.0)
    assert row["sm_fill"] == pytest.approx(64 / 132.0)
    assert by[("spin", 16)]["ideal"] == pytest.approx(8.25)
    assert by[("matmul", 8)]["ideal"] == 1.0
    assert by[("matmul", 8)]["mps_rate"] == pytest.approx(331.0 * 2 * 4096 ** 3 / 1e12)
    assert by[("spin", 8)]["mps_rate"] is None  # launches only: no unit per launch
    assert [r["n"] for r in rows if r["workload"] == "spin"] == [1, 2, 4, 8, 16]


def test_compare_with_one_mode_missing():
    runs = [r for r in h100_like_runs() if r["mode"] == "ts"]
    rows = report.compare(report.summarize(runs), WORKLOADS, 132)
    assert all(r["mps"] is None and r["mps_vs_ts"] is None and r["efficiency"] is None for r in rows)
    assert all(report.classify(r) == "not measured" for r in rows)


@pytest.mark.parametrize("ratio, ts_spread, mps_spread, expected", [
    (1.50, 0.01, 0.01, "helps"),
    (1.04, 0.01, 0.01, "no difference"),   # under the 5% floor
    (0.96, 0.01, 0.01, "no difference"),
    (0.90, 0.01, 0.01, "costs"),
    (1.15, 0.20, 0.01, "no difference"),   # the repeats themselves spread 20%
    (0.70, 0.01, 0.20, "costs"),
])
def test_classify_against_noise(ratio, ts_spread, mps_spread, expected):
    row = {"mps_vs_ts": ratio, "ts_spread": ts_spread, "mps_spread": mps_spread}
    assert report.classify(row) == expected


def test_verdicts_say_where_mps_helps_and_where_it_does_not():
    rows = report.compare(report.summarize(h100_like_runs()), WORKLOADS, 132)
    lines = report.verdicts(rows, WORKLOADS, 132)
    text = "\n".join(lines)
    assert "N=4 x3.88 of an ideal x4.00 (97%)" in text
    assert "N=8 x7.76 of an ideal x8.00 (97%)" in text
    assert ("past SM saturation (8.25 clients fill the 132 SMs) MPS has no room left to give: N=16 x8.00 (ideal "
            "x8.25), throughput x1.03 of N=8, p50 latency 3.88 ms against 2.00 ms") in text
    assert "N=16" in lines[1] and "N=16" not in lines[0]
    assert lines[2].startswith("matmul 4096x4096 float32: one client already fills the GPU; MPS does not help")


def test_verdicts_matmul_that_costs():
    runs = []
    for n in (1, 4):
        for rep in (1, 2, 3):
            runs.append(run_record("matmul", "ts", n, rep, 330.0))
            runs.append(run_record("matmul", "mps", n, rep, 330.0 if n == 1 else 250.0))
    rows = report.compare(report.summarize(runs), {"matmul": WORKLOADS["matmul"]}, 132)
    assert "MPS costs throughput here" in report.verdicts(rows, {"matmul": WORKLOADS["matmul"]}, 132)[0]


def test_verdicts_not_measured():
    lines = report.verdicts([], WORKLOADS, 132)
    assert lines == ["spin: not measured in both modes.", "matmul: not measured in both modes."]


# --- rendering ------------------------------------------------------------------------------------------------

def full_result():
    rows = report.compare(report.summarize(h100_like_runs()), WORKLOADS, 132)
    return {
        "environment": {"gpu_name": "NVIDIA H100 80GB HBM3", "sm_count": 132, "compute_capability": "9.0",
                        "driver": "580.159.04", "backend": "cupy", "date": "2026-11-23 13:00:00Z",
                        "host": "gpu", "command": "python3 benchmarks/mps_benchmark.py --out x"},
        "config": {"ns": [1, 2, 4, 8, 16], "duration_s": 1.0, "repeats": 3},
        "workloads": dict((k, dict(v, description="desc of " + k)) for k, v in WORKLOADS.items()),
        "rows": rows,
        "verdicts": report.verdicts(rows, WORKLOADS, 132),
        "check_lines": ["MPS off: 16/16 clients are NOT MPS clients", "MPS on: 16/16 clients are MPS clients"],
        "problems": [],
        "notes": [],
    }


def test_markdown_table_has_every_row_and_the_verdicts():
    text = report.render_markdown(full_result())
    lines = text.splitlines()
    header = [i for i, line in enumerate(lines) if line.startswith("| workload |")]
    assert len(header) == 1
    table = lines[header[0]:header[0] + 2 + 10]
    assert all(line.startswith("|") for line in table)
    assert table[1] == "|" + "|".join(["---"] * len(report.TABLE_COLUMNS)) + "|"
    assert len(table[0].split("|")) == len(table[2].split("|"))
    spin4 = [line for line in table if line.startswith("| spin | 4 |")][0]
    assert "| x3.88 | x4.00 | 97% |" in spin4
    assert spin4.rstrip().endswith("| helps |")
    assert [line for line in table if line.startswith("| matmul | 8 |")][0].rstrip().endswith("| no difference |")
    assert "## What MPS buys here, and where it does not help" in text
    assert "past SM saturation" in text
    assert "- MPS on: 16/16 clients are MPS clients" in text
    assert "## Problems" not in text


def test_markdown_lists_problems():
    result = full_result()
    result["problems"] = ["mode mps abandoned after 2 failed runs"]
    assert "## Problems\n\n- mode mps abandoned after 2 failed runs" in report.render_markdown(result)


def test_summary_is_short_and_ends_with_checks_and_problems():
    result = full_result()
    result["problems"] = ["something failed"]
    lines = report.render_summary(result).splitlines()
    assert lines[0].startswith("MPS benchmark: NVIDIA H100 80GB HBM3, 132 SMs, driver 580.159.04, backend cupy")
    assert len(lines) <= 25
    assert lines[-1] == "PROBLEM: something failed"
    assert "spin      4      500.0     1940.0   x3.88  x4.00   97%     8.00     2.00  helps" in lines


def test_plot_writes_a_png_or_says_why(tmp_path):
    path = str(tmp_path / "plot.png")
    why = report.plot(full_result(), path)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert why and "matplotlib" in why
        assert not os.path.exists(path)
        return
    assert why is None
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
