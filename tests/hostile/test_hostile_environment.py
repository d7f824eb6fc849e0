# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 20, inherited state: the daemon's environment is built from the plan, not inherited from whatever runs
Ansible. A CUDA_VISIBLE_DEVICES left in the controller's shell would put the daemon (and every limit planned for one
GPU) on another GPU while the task reports success; LD_* and other CUDA_* variables change what the daemon loads and
does.

Played for real: mps_daemon runs (as Ansible runs a module) in an environment that holds such variables; the stand-in
daemon it starts is then read through /proc/<pid>/environ.
"""

from __future__ import annotations

import os

import pytest

import _hostile as h

pytestmark = h.NEEDS_ROOT

GPU0_UUID = "GPU-058fcf08-fc4a-49f5-ddd9-6d7fedc642b2"   # the stand-in NVML's GPU 0 (the recorded H100)
INHERITED = {
    "CUDA_VISIBLE_DEVICES": "1",
    "CUDA_DEVICE_ORDER": "FASTEST_FIRST",
    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "7",
    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=1G",
    "CUDA_MPS_ENABLE_PER_CTX_DEVICE_MULTIPROCESSOR_PARTITIONING": "1",
    "LD_LIBRARY_PATH": "/tmp/gpulab-hostile-not-a-library-path",
    "LD_BIND_NOW": "1",
    "GPULAB_HOSTILE_CANARY": "inherited from the controller",
}


def environment_of(pid):
    with open("/proc/%d/environ" % pid, "rb") as handle:
        raw = handle.read()
    return dict(item.decode("utf-8", "replace").split("=", 1) for item in raw.split(b"\0") if b"=" in item)


@pytest.mark.parametrize("planned", [None, ["0"]], ids=["no-gpu-planned", "gpu-0-planned"])
@pytest.mark.parametrize("with_plan", [False, True], ids=["options", "plan"])
def test_the_daemon_gets_the_planned_environment(lab, tmp_path, planned, with_plan):
    env = dict(os.environ, **INHERITED)
    if with_plan:
        extra = {"visible_devices": planned} if planned else {}
        args = {"plan": h.plan_for(lab, str(tmp_path), **extra)}
    else:
        args = {"pipe_directory": lab["pipe"], "log_directory": lab["log"], "state_directory": lab["state"],
                "control_binary": h.CONTROL}
        if planned:
            args["visible_devices"] = planned
    done = h.run_module("mps_daemon", args, str(tmp_path), env=env)
    assert not done.get("failed"), h.summary(done)
    pid = h.daemon_pid(lab)
    assert pid and h.alive(pid)
    got = environment_of(pid)
    assert got.get("CUDA_MPS_PIPE_DIRECTORY") == lab["pipe"] and got.get("CUDA_MPS_LOG_DIRECTORY") == lab["log"]
    if planned:
        assert got.get("CUDA_VISIBLE_DEVICES") == GPU0_UUID, got
    wanted = {"CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"} | ({"CUDA_VISIBLE_DEVICES"} if planned else set())
    leaked = sorted(k for k in got if (k.startswith(("CUDA_", "LD_")) or k in INHERITED) and k not in wanted)
    assert not leaked, "the daemon inherited %s from the controller's environment" % ", ".join(
        "%s=%s" % (k, got[k]) for k in leaked)
