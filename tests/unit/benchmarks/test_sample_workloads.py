# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""benchmarks/sample_workloads.sh without a GPU: the fake MPS control and a fake nvcc (whose kernel_pair speaks
the workload protocol) first in PATH, no matmul workers (no PyTorch or CuPy here). It must build, run both
modes, prove membership both ways, and quit the daemon it started."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)
from fake_exec import FAKE_MPS_CONTROL, executable  # noqa: E402

FAKE_NVCC = executable(os.path.join(ROOT, "tests", "unit", "roles", "fakes", "fake_nvcc.py"), "nvcc")


def test_sample_workloads_script(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, MATMUL_WORKERS="0",
               PATH=os.pathsep.join([os.path.dirname(FAKE_MPS_CONTROL), os.environ.get("PATH", "")]))
    done = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "sample_workloads.sh"), str(out)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    reports = json.loads((out / "sample_workloads.json").read_text())
    assert reports["no-mps"]["ok"] and reports["mps"]["ok"]
    assert [w["under_mps"] for w in reports["no-mps"]["workloads"]] == [False, False]
    assert [w["under_mps"] for w in reports["mps"]["workloads"]] == [True, True]
    assert "kernel pair built with %s" % FAKE_NVCC in done.stdout
    assert re.search(r"mps +add +pid \d+ +an MPS client +median +0\.500 ms over  3 iterations  cuda-c ok", done.stdout)
    daemon = int(re.search(r"MPS control daemon started: pid (\d+)", done.stdout).group(1))
    assert "MPS daemon %d stopped" % daemon in done.stdout
    assert not os.path.exists("/proc/%d" % daemon)
