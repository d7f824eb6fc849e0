# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""benchmarks/seed_experiment.py (what tests/gpu/run_all.sh's `workloads` step runs) without a GPU: the fake MPS
control, a fake nvcc whose kernel_pair and a fake python3 whose matmul worker run on the simulated GPU of
tests/unit/roles/fakes/fake_gpu.py. It must start its own daemon through the collection's client, do the lab's
experiment with the role's code, prove membership both ways, write the table, and quit the daemon it started."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
SCRIPT = os.path.join(ROOT, "benchmarks", "seed_experiment.py")
FAKES = os.path.join(ROOT, "tests", "unit", "roles", "fakes")
sys.path.insert(0, HERE)
from fake_exec import FAKE_MPS_CONTROL, executable  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import mps_benchmark as bench  # noqa: E402

FAKE_NVCC = executable(os.path.join(FAKES, "fake_nvcc.py"), "nvcc")
FAKE_GPU_PYTHON = executable(os.path.join(FAKES, "fake_gpu.py"), "python3")


def run(tmp_path, *extra, env=None):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, SCRIPT, "--out", str(out), "--control-binary", FAKE_MPS_CONTROL,
                           "--iterations", "3"] + list(extra), capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})), check=False)
    report = json.loads((out / "seed_experiment.json").read_text()) if (out / "seed_experiment.json").exists() else None
    return done, report, out


def test_the_seed_experiment_against_a_daemon_of_its_own(tmp_path):
    done, report, out = run(tmp_path, "--python", FAKE_GPU_PYTHON, "--nvcc", FAKE_NVCC)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "kernel pair built with %s" % FAKE_NVCC in done.stdout
    assert [(r["mode"], r["group"], len(r["workloads"])) for r in report["runs"]] == [
        ("no-mps", "matmul", 1), ("no-mps", "matmul", 2), ("no-mps", "kernel_pair", 1), ("no-mps", "kernel_pair", 2),
        ("mps", "matmul", 1), ("mps", "matmul", 2), ("mps", "kernel_pair", 1), ("mps", "kernel_pair", 2)]
    assert all(w["under_mps"] is (r["mode"] == "mps") for r in report["runs"] for w in r["workloads"])
    assert [w["result"]["implementation"] for w in report["runs"][2]["workloads"]] == ["cuda-c"]
    # The table last, as the lab prints it, and in OUT.
    assert report["table_text"] in done.stdout and report["table_text"] in (out / "seed_experiment.md").read_text()
    assert done.stdout.rstrip().endswith("The daemon's defaults: 100 % of the SMs per client, no pinned memory limit.")
    daemon = int(re.search(r"MPS control daemon started: pid (\d+)", done.stdout).group(1))
    assert "MPS control daemon %d stopped" % daemon in done.stdout
    assert not bench.pid_alive(daemon)  # gone (a zombie waits only for a reaper this container may lack)
    assert "seed_experiment.log" in os.listdir(str(out))


def test_without_a_library_the_matmul_workers_are_left_out_and_clients_without_mps_fail(tmp_path):
    done, report, _out = run(tmp_path, "--python", sys.executable, "--nvcc", FAKE_NVCC,
                             env={"GPULAB_SIM_NO_MPS": "1"})
    assert done.returncode == 1
    assert "has neither PyTorch nor CuPy: seed 002's matmul workers are left out" in done.stdout
    assert sorted(set(r["group"] for r in report["runs"])) == ["kernel_pair"]
    assert any("add ran WITHOUT MPS" in p for p in report["problems"])
    assert "PROBLEM: kernel_pair, 1 alone, mps: add ran WITHOUT MPS" in done.stdout


def test_nothing_to_run_the_kernels_stops_before_a_daemon_starts(tmp_path):
    done, report, _out = run(tmp_path, "--python", sys.executable, "--nvcc", "none")
    assert done.returncode == 2 and report is None
    assert "neither nvcc nor a Python with PyTorch or CuPy" in done.stdout
    assert "MPS control daemon started" not in done.stdout
