# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure part of the noisy-neighbour benchmark (benchmarks/mps_qos_report.py): statistics, ratios, the criterion,
the class check, the outputs; over made-up client reports whose answers are known."""

from __future__ import annotations

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import mps_qos_report as report  # noqa: E402


def test_latency_stats_are_nearest_rank_over_every_launch():
    stats = report.latency_stats([float(x) for x in range(1, 201)])  # 1..200 ms
    assert (stats["count"], stats["p50_ms"], stats["p99_ms"], stats["max_ms"]) == (200, 100.0, 198.0, 200.0)
    assert stats["quantiles_ms"][0] == 1.0 and stats["quantiles_ms"][100] == 200.0 and len(stats["quantiles_ms"]) == 101
    assert report.latency_stats([]) is None


def test_aggregate_run_counts_the_neighbours_and_their_gpu_work():
    run = report.aggregate_run({"pid": 1, "latency_ms": [0.25] * 99 + [0.5], "check": "ok"},
                               [{"pid": 2, "count": 400, "check": "ok"}, {"pid": 3, "count": 300, "check": "bad"}],
                               2.0, fill_solo_ms=2.0)
    assert run["neighbour_throughput"] == 350.0 and run["neighbour_gpu"] == pytest.approx(0.7)
    assert run["latency"]["p99_ms"] == 0.25 and run["latency"]["max_ms"] == 0.5
    assert run["checks_failed"] == [3]
    with pytest.raises(ValueError):
        report.aggregate_run({"latency_ms": []}, [], 0)


def make_runs(spec, repeats=2):
    """spec: {(mode, n): (latency value, neighbour launches per run)} -> runs as the benchmark records them."""
    runs = []
    for (mode, n), (latency, count) in spec.items():
        for rep in range(1, repeats + 1):
            latencies = [latency] * 95 + [latency * 2] * 5
            neighbours = [{"pid": 10 + i, "count": count} for i in range(n)]
            runs.append({"mode": mode, "n": n, "repeat": rep, "latency_ms": latencies,
                         "result": report.aggregate_run({"pid": 1, "latency_ms": latencies}, neighbours, 1.0, 2.0)})
    return runs


SPEC = {("ts", 0): (0.25, 0), ("ts", 7): (4.8, 60), ("mps", 0): (0.26, 0), ("mps", 7): (6.1, 70),
        ("qos", 0): (0.27, 0), ("qos", 7): (0.29, 50)}


def test_rows_give_ratios_to_alone_and_to_no_limits():
    table = report.rows(make_runs(SPEC), [0, 7], ["ts", "mps", "qos"], fill_solo_ms=2.0)
    by = dict(((r["mode"], r["n"]), r) for r in table)
    qos7 = by[("qos", 7)]
    assert qos7["latency"]["p99_ms"] == pytest.approx(0.58)  # the 5 % at twice the value reach the p99
    assert qos7["p99_vs_alone"] == pytest.approx(0.58 / 0.54)
    assert qos7["p99_vs_best_alone"] == pytest.approx(0.58 / 0.50)  # ts alone is the best alone
    assert qos7["neighbour_throughput"] == 350.0 and qos7["neighbour_vs_unlimited"] == pytest.approx(50 / 70.0)
    assert qos7["neighbour_gpu"] == pytest.approx(0.7) and qos7["repeats"] == 2
    assert by[("mps", 7)]["neighbour_vs_unlimited"] == 1.0
    assert by[("ts", 0)]["neighbour_throughput"] is None


def test_a_failed_run_is_counted_and_left_out():
    runs = make_runs({("qos", 0): (0.3, 0)}) + [{"mode": "qos", "n": 0, "repeat": 3, "result": None}]
    row = report.rows(runs, [0], ["qos"])[0]
    assert (row["repeats"], row["failed_repeats"]) == (2, 1)


@pytest.mark.parametrize("qos7, passed", [((0.29, 50), True), ((0.26, 50), True), ((0.40, 50), False)])
def test_the_criterion_is_against_the_best_p99_alone(qos7, passed):
    spec = dict(SPEC)
    spec[("qos", 7)] = qos7
    # x1.2 of the best alone (ts: p99 0.50 ms): 0.29 -> p99 0.58 = x1.16 passes; 0.26 -> x1.04; 0.40 -> x1.6 fails.
    crit = report.criterion(report.rows(make_runs(spec), [0, 7], ["ts", "mps", "qos"]), 1.2)
    assert crit["n"] == 7 and crit["alone_p99_ms"] == 0.5
    assert crit["passed"] is passed
    assert ("PASSED" if crit["passed"] else "FAILED") in report.criterion_line(crit)


def test_no_criterion_without_the_qos_mode_or_the_client_alone():
    assert report.criterion(report.rows(make_runs({("ts", 0): (1, 0)}), [0], ["ts"]), 1.2)["passed"] is None
    only7 = {("qos", 7): (0.3, 50)}
    assert report.criterion(report.rows(make_runs(only7), [7], ["qos"]), 1.2)["passed"] is None
    assert "not measured" in report.criterion_line(report.criterion([], 1.2))
    assert report.criterion_line({"limit": 0}) == "criterion: none asked (--criterion 0)"


@pytest.mark.parametrize("seen, ok, words", [
    ({"mps_env": {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "12"}, "sms_used": 16}, True, "blocks on 16 SMs of 132"),
    ({"mps_env": {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "12"}, "sms_used": 18}, True, "at most 16"),  # pairs of SMs
    ({"mps_env": {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "12"}, "sms_used": 132}, False, "more than the 16"),
    ({"mps_env": {}, "sms_used": 132}, True, "no limit of its own"),
    ({"mps_env": {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "12"}, "sms_used": None, "sm_count_attribute": 16}, True,
     "not measurable"),
    ({"mps_env": {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "x"}, "sms_used": 1}, False, "is not a number"),
])
def test_class_check(seen, ok, words):
    got, line = report.class_check(seen, 132)
    assert got is ok and words in line


def test_allowed_sms():
    assert report.allowed_sms(12, 132) == 16 and report.allowed_sms(25, 132) == 33
    assert report.allowed_sms(None, 132) == 132 and report.allowed_sms(100, 132) == 132


def result_of(spec):
    table = report.rows(make_runs(spec), [0, 7], ["ts", "mps", "qos"], 2.0)
    evidence = [{"mode": "qos", "role": "neighbour1", "pid": 11, "class": "batch", "sms_used": 16,
                 "sm_count_attribute": 16, "mem_free_mib": 15872, "class_ok": True, "class_line": "blocks on 16 SMs",
                 "mps_env": {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "12", "CUDA_MPS_CLIENT_PRIORITY": "1"}}]
    return {"environment": {"gpu_name": "NVIDIA H200", "sm_count": 132, "driver": "580.159.04", "backend": "cupy"},
            "config": {"ns": [0, 7], "duration_s": 2.0, "repeats": 2, "latency_blocks": 16, "fill_blocks": 132,
                       "latency_solo_ms": 0.24, "fill_solo_ms": 2.0},
            "classes": {"batch": {"path": "/etc/gpulab-mps/qos/batch.env",
                                  "environment": {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "12"}}},
            "rows": table, "criterion": report.criterion(table, 1.2), "verdicts": report.verdicts(table, [0, 7]),
            "evidence": evidence, "daemon_evidence": ["mode qos: default client priority: 0"],
            "check_lines": ["MPS on: 8/8 clients are MPS clients"], "problems": [], "notes": []}


def test_markdown_and_summary_say_what_was_shown():
    result = result_of(SPEC)
    markdown = report.render_markdown(result)
    assert "| MPS, QoS classes | 7 | 0.290 | 0.580 | 0.580 | x1.07 | x1.16 | 200 | 350.0 | 0.70 | x0.71 |" in markdown
    assert "criterion: with 7 neighbours in the batch class, the latency client's p99 is 0.580 ms = x1.16" in markdown
    assert "| qos | neighbour1 (pid 11) | batch | 12 | 1 | - | 16 | 16 | 15872 | yes: blocks on 16 SMs |" in markdown
    assert "MPS without limits is worse than time-slicing for the latency client (p99 12.200 against 9.600 ms)." \
        in markdown
    summary = report.render_summary(result)
    assert summary.splitlines()[-1] == "check: MPS on: 8/8 clients are MPS clients"
    assert "class: qos neighbour1 pid 11 [ACTIVE_THREAD_PERCENTAGE=12 CLIENT_PRIORITY=1] ok" in summary


def test_plot_writes_a_png_or_says_why(tmp_path):
    path = str(tmp_path / "q.png")
    why = report.plot(result_of(SPEC), path)
    if why is None:
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    else:
        assert "matplotlib" in why and not os.path.exists(path)
