# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tests/gpu/multi_gpu_check.py on the CPU: its rounds (pure), and its --simulate path over the stand-ins (4 GPUs).
The simulated run is NOT a GPU result: it proves the plumbing (daemon, ordinals, read-backs, server.log, clean-up)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(ROOT, "tests", "gpu"))
import multi_gpu_check as mgc  # noqa: E402

from ansible_collections.gpulab.mps.plugins.module_utils import _plan  # noqa: E402

U = ["GPU-%d%07d-0000-0000-0000-000000000000" % (i, i) for i in range(4)]
GPUS = [{"index": i, "uuid": U[i], "memory_total_mib": 143771, "memory_total_bytes": 143771 << 20,
         "compute_capability": "9.0", "mps_client_cap": 48, "compute_mode": "default", "name": "NVIDIA H200",
         "mig_mode_current": "disabled"} for i in range(4)]
DRIVER = {"driver_version": "580.159.04", "driver_branch": 580, "cuda_driver_version": "13.0"}


def test_one_gpu_rounds_name_gpu_0_by_index_then_by_uuid():
    rounds = mgc.limit_rounds(GPUS[:1])
    assert [r["pinned"] for r in rounds] == [{"0": "2560M"}, {U[0]: "3072M"}]


def test_four_gpu_rounds_mix_index_and_uuid_and_reverse_a_subset():
    every, subset = mgc.limit_rounds(GPUS)
    assert every["pinned"] == {"0": "2048M", U[1]: "2560M", "2": "3072M", U[3]: "3584M"}
    assert subset["visible_devices"] == [U[2], "0"]
    daemon, errors = _plan.daemon_plan(GPUS, subset["visible_devices"], None, subset["pinned"])
    # NVML index 0 is MPS ordinal 1: its limit by index goes there; GPU 2 (by UUID in visible_devices) is ordinal 0.
    assert errors == [] and daemon["devices"] == {"0": U[2], "1": U[0]}
    assert daemon["pinned_memory_limit"] == {"0": 3584 << 20, "1": 3072 << 20}
    assert mgc.expected_ordinals(GPUS, subset["visible_devices"]) == daemon["devices"]


def test_the_plan_gives_each_gpu_its_memory_over_its_own_replicas():
    assert mgc.replica_counts(GPUS) == {0: 20, 1: 10, 2: 7, 3: 4}
    plan = _plan.build_plan(DRIVER, GPUS, mgc.plan_settings("/run/p", "/run/l", "/var/lib/s", "/usr/bin/x", GPUS))
    assert [(r["replicas"], r["memory_per_replica_mib"]) for r in plan["sharing"]["gpus"]] == [
        (20, 7188), (10, 14377), (7, 20538), (4, 35942)]
    with pytest.raises(_plan.PlanError, match="cannot work with owner host"):
        _plan.build_plan(DRIVER, GPUS, mgc.plan_settings("/run/p", "/run/l", "/var/lib/s", "/usr/bin/x", GPUS,
                                                         owner="host"))


@pytest.mark.parametrize("gpus", ["1", "4"])
def test_the_simulated_run_passes_and_says_it_is_not_a_gpu_result(tmp_path, gpus):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "gpu", "multi_gpu_check.py"), "--simulate",
                           "--out", str(out)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, GPULAB_STANDIN_GPUS=gpus), check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = (out / "summary.txt").read_text()
    assert "VERDICT: SIMULATED, NOT A GPU RESULT: PASS" in summary
    results = json.loads((out / "results.json").read_text())
    assert results["simulated"] is True and results["mps_processes_left"] == []
    names = [r["name"] for r in results["rounds"]]
    if gpus == "1":
        assert names == ["one-gpu-by-index", "one-gpu-by-uuid", "plan-per-gpu-replicas", "plan-shares-by-index"]
        assert any(s.startswith("N < 2") for s in results["skipped"])
    else:
        assert names == ["all-gpus-index-and-uuid", "subset-2,0-reversed", "plan-per-gpu-replicas",
                         "plan-shares-by-index"]
        subset = results["rounds"][1]
        logged = [c for c in subset["checks"] if "server.log" in c["check"]]
        assert [c["seen"] for c in logged] == [3584 << 20, 3072 << 20]   # ordinal 0 = GPU 2, ordinal 1 = GPU 0
