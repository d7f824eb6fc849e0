# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tests/gpu/qos_lane.sh rehearsed without a GPU (GPULAB_QOS_LANE_REHEARSAL): every step in order, what each
hands to the next (the class files site.yml writes are the ones the benchmark playbook measures), the archives
that come back, and that nothing is left behind. What the driver does is what the GPU run measures; here the
plumbing of a lane that has one call on a lent GPU is checked."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
SCRIPT = os.path.join(ROOT, "tests", "gpu", "qos_lane.sh")


def wrapper(path, script):
    with open(path, "w") as handle:
        handle.write('#!/bin/sh\nexec %s %s "$@"\n' % (shlex.quote(sys.executable), shlex.quote(script)))
    os.chmod(path, 0o755)


def test_the_lane_rehearsed(tmp_path):
    rehearsal = tmp_path / "r"
    rehearsal.mkdir()
    fake = os.path.join(ROOT, "tests", "unit", "benchmarks", "fake_mps_control.py")
    standin = os.path.join(ROOT, "tests", "standins", "nvidia-cuda-mps-control")
    wrapper(str(rehearsal / "nvidia-cuda-mps-control"), fake)
    wrapper(str(rehearsal / "nvidia-cuda-mps-control-standin"), standin)
    out = tmp_path / "out"
    env = dict(os.environ, GPULAB_QOS_LANE_REHEARSAL=str(rehearsal),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    done = subprocess.run(["bash", SCRIPT, str(out)], capture_output=True, text=True, timeout=600, env=env,
                          cwd=ROOT, check=False)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert sorted(os.listdir(str(out))) == ["ansible.tar.gz", "lane.log", "multiuser.tar.gz", "qos.tar.gz",
                                            "summary.txt"]
    summary = (out / "summary.txt").read_text()
    assert "multiuser: exit 0" in summary
    assert "site.yml --tags host: exit 0, again exit 0: localhost" in summary and "changed=0" in summary
    assert "benchmark playbook: exit 0" in summary and "failed=0" in summary
    assert "teardown: exit 0" in summary and "class files left: \n" in summary + "\n"
    assert "MPS processes left: none" in summary and "throwaway users left: \n" in summary + "\n"
    with tarfile.open(str(out / "qos.tar.gz")) as archive:
        names = archive.getnames()
        assert "qos/localhost/mps_qos.json" in names and "qos/localhost/mps_qos.md" in names
        result = json.load(archive.extractfile("qos/localhost/mps_qos.json"))
    # The benchmark measured the classes that site.yml wrote, with the lane's 16G pinned limit for batch.
    assert result["classes"]["batch"]["path"] == str(rehearsal / "qos" / "batch.env")
    assert result["classes"]["batch"]["environment"]["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=16G"
    assert result["config"]["modes"] == ["ts", "mps", "prio", "qos"]
    with tarfile.open(str(out / "multiuser.tar.gz")) as archive:
        findings = json.load(archive.extractfile("multiuser/mps_multiuser.json"))["findings"]
    assert [f["start"] for f in findings] == ["nvidia-cuda-mps-control -d", "nvidia-cuda-mps-control -d -M"]
    # The findings are printed last, for the caller that sees only the end of the output.
    tail = done.stdout[-6000:]
    assert "=== multi-user finding" in tail and "nvidia-cuda-mps-control -d -M: CONCURRENT" in tail
    assert "=== noisy neighbours" in tail and "| MPS, QoS classes | 2 |" in tail
