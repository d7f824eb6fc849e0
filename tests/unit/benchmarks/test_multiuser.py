# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""benchmarks/mps_multiuser.py: the verdict from two users' timed launches, and the whole script without a GPU or
root (--as-current-user, simulated clients, the fake nvidia-cuda-mps-control)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
SCRIPT = os.path.join(ROOT, "benchmarks", "mps_multiuser.py")
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from fake_exec import FAKE_MPS_CONTROL as FAKE  # noqa: E402

import mps_benchmark as bench  # noqa: E402
import mps_multiuser as mu  # noqa: E402

SERVERS = [{"pid": 10, "uid": 0}]


def test_split_latencies_by_the_other_clients_window():
    before, during = mu.split_latencies([1, 2, 3, 4, 5], [0, 100, 200, 300, 400], 150, 320)
    assert before == [1, 2] and during == [3, 4]


@pytest.mark.parametrize("finding, word", [
    ({"b_ready_before_a_exit": True, "a_p50_before_ms": 2.0, "a_p50_during_ms": 2.1, "b_p50_ms": 2.05,
      "alone_ms": 2.0, "servers_during": SERVERS}, "concurrent"),
    ({"b_ready_before_a_exit": True, "a_p50_before_ms": 2.0, "a_p50_during_ms": 4.1, "b_p50_ms": 4.0,
      "alone_ms": 2.0, "servers_during": SERVERS * 2}, "time-sliced"),
    # A not slowed, but B at twice its time alone: they did not share the GPU at once.
    ({"b_ready_before_a_exit": True, "a_p50_before_ms": 2.0, "a_p50_during_ms": 2.0, "b_p50_ms": 4.0,
      "alone_ms": 2.0}, "time-sliced"),
    ({"b_ready_before_a_exit": False, "b_wait_after_a_exit_s": 1.5, "servers_during": SERVERS}, "serialized"),
    ({"b_failed": "client 12 exited (status 1)"}, "failed"),
    ({"b_ready_before_a_exit": True, "a_p50_before_ms": None, "a_p50_during_ms": 2.0, "b_p50_ms": 2.0}, "unclear"),
])
def test_verdict(finding, word):
    got, line = mu.verdict(finding)
    assert got == word, line
    if word == "serialized":
        assert "ready 1.5 s after A's client exited; while A ran the daemon had 1 server (pid 10 uid 0)" in line


def test_a_user_of_that_name_that_is_not_ours_is_refused(monkeypatch):
    monkeypatch.setattr(mu.os, "geteuid", lambda: 0)
    monkeypatch.setattr(mu.shutil, "which", lambda name: "/usr/bin/%s" % name)
    users = mu.Users(["root", "gpulabmu2"], lambda message: None)
    with pytest.raises(bench.BenchError, match="user root exists and is not this script's"):
        users.create()
    assert users.created == []


def test_two_users_side_by_side_without_root(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, SCRIPT, "--as-current-user", "--backend", "sim", "--control-binary", FAKE,
                           "--out", str(out), "--a-seconds", "4"], capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"), check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    result = json.loads((out / "mps_multiuser.json").read_text())
    assert [f["daemon"] for f in result["findings"]] == ["plain", "multiuser"]
    assert [f["start"] for f in result["findings"]] == ["nvidia-cuda-mps-control -d", "nvidia-cuda-mps-control -d -M"]
    for finding in result["findings"]:
        # The simulated GPU shares 16-block launches between processes: both ran at once, both proven MPS clients.
        assert finding["verdict"] == "concurrent" and finding["a_mps_client"] and finding["b_mps_client"]
        assert finding["b_seen"]["mps_env"]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
        assert finding["b_seen"]["sms_used"] == 33 and finding["a_seen"]["sms_used"] == 132
        assert any("set_default_active_thread_percentage 50" in c for c in finding["commands"])
    assert (out / "mps_multiuser.md").read_text().count("| `nvidia-cuda-mps-control -d") == 2
    assert "nvidia-cuda-mps-control -d -M: CONCURRENT" in done.stdout
    # Every daemon was stopped: no pid file left (the pipe directories are removed with the work folder).
    assert all(not os.path.exists(f["pipe_directory"]) for f in result["findings"])


def test_dry_run_and_arguments(capsys):
    assert mu.main(["--dry-run"]) == 0
    with pytest.raises(SystemExit):
        mu.parse_args(["--users", "one"])
    assert "--users two different names" in capsys.readouterr().err
