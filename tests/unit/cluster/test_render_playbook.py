# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tests/cluster/render.yml, the lane's way through the collection, run here on the pynvml stand-in (4 recorded
H100s) instead of NVIDIA's mock NVML: what it writes is what lane.py applies to the real cluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from ansible_collections.gpulab.mps.plugins.module_utils import _device_plugin

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(ROOT, "tests", "cluster"))

import lane_module  # noqa: E402

lane = lane_module.load()


@pytest.mark.parametrize("owner", ["host", "plugin"])
def test_render_yml_writes_the_objects_the_lane_applies(tmp_path, owner):
    playbook = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable)) or shutil.which("ansible-playbook")
    work = tmp_path / "plan"
    work.mkdir(mode=0o755)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               PYTHONPATH=os.path.join(ROOT, "tests", "standins"), GPULAB_STANDIN_GPUS="4")
    proc = subprocess.run([playbook, "-i", "localhost,", os.path.join(ROOT, "tests", "cluster", "render.yml"),
                           "-e", "lane_render_directory=%s" % (tmp_path / "rendered"), "-e", "lane_work_directory=%s" % work,
                           "-e", "lane_owner=%s" % owner, "-e", "lane_replicas=20"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    (node,) = yaml.safe_load((tmp_path / "rendered" / "plans.yaml").read_text())
    assert node["name"] == "lane-node"
    assert node["plan"]["resources"] == {"nvidia.com/gpu": 80}
    assert node["plan"]["labels"]["gpulab.mps/mps-owner"] == owner
    objects = lane.split_manifests((tmp_path / "rendered" / "manifests.yaml").read_text())
    daemonsets = [o for o in objects if o["kind"] == "DaemonSet"]
    assert len(daemonsets) == (2 if owner == "plugin" else 1)
    images = set(c["image"] for d in daemonsets for c in d["spec"]["template"]["spec"]["containers"]
                 + d["spec"]["template"]["spec"].get("initContainers", []))
    assert images == {_device_plugin.UPSTREAM_IMAGE}          # the tag the lane gives its device-plugin image
    # F1 (tests/cluster/FINDINGS.md): without the kind_cluster role in the play nobody makes a RuntimeClass, and the real
    # API server rejected every pod that named one ('pod rejected: RuntimeClass "nvidia" not found'): none is named.
    assert [d["spec"]["template"]["spec"].get("runtimeClassName") for d in daemonsets] == [None] * len(daemonsets)
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"]
    (config,) = [yaml.safe_load(text) for text in configmap["data"].values()]
    assert lane.sharing_summary(config) == {"strategy": "mps" if owner == "plugin" else "timeSlicing",
                                            "replicas": {"nvidia.com/gpu": 20}, "failRequestsGreaterThanOne": True}
    plan = json.loads((tmp_path / "rendered" / "mps_plan.json").read_text())
    assert plan["owner"] == owner and len(plan["gpus"]) == 4
