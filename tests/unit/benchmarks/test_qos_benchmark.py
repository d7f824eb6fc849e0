# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The noisy-neighbour benchmark (benchmarks/mps_qos_benchmark.py) end to end without a GPU: simulated clients
(mps_bench_client.py --backend sim), the fake nvidia-cuda-mps-control, and class files written by the text the module
mps_qos_files writes (_qos.env_file_text) from the plan's classes, so that what the collection writes is what the benchmark
reads.

What is checked is the harness, never speed: every mode runs, every client is proven an MPS client or not, each
client's own report shows the class it was given, a failed criterion fails the run, and nothing is left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.gpulab.mps.plugins.module_utils import _qos

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
SCRIPT = os.path.join(ROOT, "benchmarks", "mps_qos_benchmark.py")
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from fake_exec import FAKE_MPS_CONTROL as FAKE  # noqa: E402

import mps_benchmark as bench  # noqa: E402
import mps_qos_benchmark as qb  # noqa: E402

GPUS = [{"index": 0, "memory_total_bytes": 150486614016}]
SMALL = ["--backend", "sim", "--control-binary", FAKE, "--ns", "0,2", "--repeats", "1", "--duration", "0.3",
         "--sim-latency-ms", "1", "--sim-fill-ms", "3", "--start-timeout", "60"]


def write_classes(folder, classes, pipe="/tmp/nvidia-mps"):
    """The class files exactly as mps_qos_files writes them: its text, the plan's classes."""
    qos, errors, _warnings = _qos.qos_plan(classes, str(folder), GPUS, None, pipe)
    assert errors == []
    os.makedirs(str(folder), exist_ok=True)
    for name, values in qos["classes"].items():
        with open(values["env_file"], "w") as handle:
            handle.write(_qos.env_file_text(name, values, qos["directory"]))
    return qos


def run(tmp_path, *extra, classes=None, timeout=180):
    qos_dir = tmp_path / "qos"
    write_classes(qos_dir, _qos.DEFAULT_CLASSES if classes is None else classes)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, SCRIPT, "--out", str(out), "--qos-dir", str(qos_dir)] + SMALL + list(extra),
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                          check=False)
    result = json.loads((out / "mps_qos.json").read_text()) if (out / "mps_qos.json").exists() else None
    return done, result, out


def started_pids(result):
    pids = [result["probe"]["pid"]] + [p for c in result["checks"] for p in c["pids"]]
    daemon = result["environment"]["daemon"]
    if daemon and daemon["own"] and daemon["pid"]:
        pids.append(daemon["pid"])
    return pids


def assert_nothing_left(pids):
    deadline = time.time() + 5
    while time.time() < deadline and any(bench.pid_alive(p) for p in pids):
        time.sleep(0.1)
    assert [p for p in pids if bench.pid_alive(p)] == []


def test_the_classes_reach_every_client_and_every_mode_is_measured(tmp_path):
    classes = {"latency": _qos.DEFAULT_CLASSES["latency"],
               "batch": dict(_qos.DEFAULT_CLASSES["batch"], pinned_memory_limit="16G")}
    done, result, out = run(tmp_path, "--modes", "ts,mps,qos", "--criterion", "0", classes=classes)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert {"mps_qos.json", "mps_qos.md", "mps_qos.log", "mps_daemon.log"} <= set(os.listdir(str(out)))
    assert [(r["mode"], r["n"]) for r in result["rows"]] == [("ts", 0), ("ts", 2), ("mps", 0), ("mps", 2), ("qos", 0),
                                                             ("qos", 2)]
    assert all(r["latency"]["count"] > 0 and r["repeats"] == 1 for r in result["rows"])
    assert all(r["neighbour_throughput"] > 0 for r in result["rows"] if r["n"])
    # The simulation's latencies are on its virtual clock (test_sim_clock.py): the same on any machine, however busy.
    # Alone 1 ms; time-slicing a slice of each of the 2 neighbours (3 ms) first; MPS without limits one neighbour launch
    # first; the classes leave the latency client SMs of its own.
    assert [(r["mode"], r["n"], r["latency"]["p99_ms"]) for r in result["rows"]] == [
        ("ts", 0, 1.0), ("ts", 2, 7.0), ("mps", 0, 1.0), ("mps", 2, 4.0), ("qos", 0, 1.0), ("qos", 2, 1.0)]
    # Membership: 3 clients per mode (1 latency + 2 neighbours), none in ps with MPS off, all with MPS on.
    starts = dict((c["mode"], c) for c in result["checks"] if c["when"] == "start")
    assert starts["ts"]["ok"] and starts["ts"]["listed"] == [] and len(starts["ts"]["pids"]) == 3
    assert starts["mps"]["listed"] == starts["mps"]["pids"] and starts["qos"]["listed"] == starts["qos"]["pids"]
    # Each client's own report: the batch class's variables reached the neighbours in mode qos and nowhere else,
    # and their blocks stayed within 12 % of the SMs; the latency client has no thread limit.
    qos = [e for e in result["evidence"] if e["mode"] == "qos"]
    neighbours = [e for e in qos if e["role"].startswith("neighbour")]
    assert len(neighbours) == 2 and all(e["class"] == "batch" and e["class_ok"] for e in neighbours)
    assert all(e["mps_env"]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "12" and e["mps_env"]["CUDA_MPS_CLIENT_PRIORITY"]
               == "1" and e["mps_env"]["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=16G" and e["sms_used"] <= 16
               for e in neighbours)
    latency = [e for e in qos if e["role"] == "latency"][0]
    assert latency["class"] == "latency" and "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" not in latency["mps_env"]
    # The class's pipe directory is the host daemon's: the benchmark's own daemon is used instead, and said so.
    assert latency["mps_env"]["CUDA_MPS_PIPE_DIRECTORY"] == result["environment"]["daemon"]["pipe_directory"]
    assert any("class latency names pipe directory /tmp/nvidia-mps" in n for n in result["notes"])
    assert not [k for e in result["evidence"] if e["mode"] != "qos" for k in e["mps_env"]
                if k != "CUDA_MPS_PIPE_DIRECTORY"]
    assert "mode qos: default client priority: 0" in result["daemon_evidence"]
    markdown = (out / "mps_qos.md").read_text()
    assert "## The classes reach the clients" in markdown and "| MPS, QoS classes | 2 |" in markdown
    assert "class: qos neighbour1 pid" in done.stdout
    assert not os.path.exists(result["environment"]["daemon"]["pipe_directory"])
    assert_nothing_left(started_pids(result))


def test_a_failed_criterion_fails_the_run(tmp_path):
    """A batch class without a thread limit leaves the neighbours the whole (simulated) GPU: the latency client
    waits behind them, far past 1.2x its p99 alone, and the run says so and exits 1. On the simulation's virtual clock
    that is exactly 4 ms against 1 ms, however busy the machine (it once passed the criterion on a loaded machine,
    when the simulation measured real time: issue 21)."""
    classes = {"latency": {"client_priority": 0}, "batch": {"client_priority": 1}}
    done, result, _out = run(tmp_path, "--modes", "qos", "--criterion", "1.2", classes=classes)
    assert done.returncode == 1, done.stdout[-3000:]
    crit = result["criterion"]
    assert crit["passed"] is False and crit["n"] == 2 and crit["ratio"] == 4.0
    assert (crit["p99_ms"], crit["alone_p99_ms"]) == (4.0, 1.0)
    assert any(p.startswith("criterion: with 2 neighbours") and "FAILED" in p for p in result["problems"])
    assert done.stdout.rstrip().splitlines()[-1].startswith("PROBLEM: criterion:")
    assert_nothing_left(started_pids(result))


def test_clients_that_silently_run_without_mps_fail_their_mode(tmp_path):
    """The fake daemon lists nobody: what clients with a wrong pipe directory look like. The qos mode is not
    measured, and the criterion is not judged on what was not measured."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", GPULAB_SIM_NO_MPS="1")
    write_classes(tmp_path / "qos", _qos.DEFAULT_CLASSES)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, SCRIPT, "--out", str(out), "--qos-dir", str(tmp_path / "qos"),
                           "--modes", "ts,qos", "--ps-wait", "1"] + SMALL, capture_output=True, text=True,
                          timeout=180, env=env, check=False)
    result = json.loads((out / "mps_qos.json").read_text())
    assert done.returncode == 1
    assert [r["mode"] for r in result["rows"] if r["latency"]] == ["ts", "ts"]
    assert any("are in NO get_client_list of the MPS daemon" in p for p in result["problems"])
    assert result["criterion"]["passed"] is None
    assert_nothing_left(started_pids(result))


def test_a_missing_class_file_stops_before_anything_starts(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, SCRIPT, "--out", str(out), "--qos-dir", str(tmp_path / "none")] + SMALL,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "no class file %s/latency.env: install the QoS classes (site.yml --tags host" % (tmp_path / "none") \
        in done.stdout
    # ts and mps need no class.
    done, _result, _out = run(tmp_path, "--modes", "ts", "--qos-dir", str(tmp_path / "none"), "--ns", "0")
    assert done.returncode == 0, done.stdout[-2000:]


def test_a_mode_the_classes_cannot_make_is_refused(tmp_path):
    write_classes(tmp_path / "qos", {"latency": {}, "batch": {"active_thread_percentage": 20}})
    done = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path / "out"), "--qos-dir", str(tmp_path / "qos"),
                           "--modes", "prio"] + SMALL, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "mode prio needs CUDA_MPS_CLIENT_PRIORITY in class batch" in done.stdout


def test_the_class_file_reader(tmp_path):
    qos = write_classes(tmp_path, {"batch": {"active_thread_percentage": 12.5, "client_priority": 1}})
    env = qb.read_env_file(qos["classes"]["batch"]["env_file"])
    assert env == {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "12.5", "CUDA_MPS_CLIENT_PRIORITY": "1",
                   "CUDA_MPS_PIPE_DIRECTORY": "/tmp/nvidia-mps"}
    bad = tmp_path / "bad.env"
    bad.write_text("# fine\nexport FOO=1\n")
    with pytest.raises(bench.BenchError, match="line 2 is not NAME=value"):
        qb.read_env_file(str(bad))


@pytest.mark.parametrize("argv, message", [
    (["--modes", "fast"], "--modes takes ts, mps, prio, threads and/or qos (got fast)"),
    (["--ns", "0,60"], "--ns must be between 0 and 47 neighbours"),
    (["--ns", "a"], "--ns takes whole numbers"),
    (["--duration", "0"], "must be positive"),
])
def test_arguments_are_validated(argv, message, capsys):
    with pytest.raises(SystemExit):
        qb.parse_args(argv)
    assert message in capsys.readouterr().err


def test_modes_run_in_a_fixed_order_and_dry_run_touches_nothing(tmp_path):
    assert qb.parse_args(["--modes", "qos,ts,prio"]).modes == ["ts", "prio", "qos"]
    done = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0 and "dry run: nothing started" in done.stdout
    assert "/etc/gpulab-mps/qos/latency.env" in done.stdout and not (tmp_path / "out").exists()
