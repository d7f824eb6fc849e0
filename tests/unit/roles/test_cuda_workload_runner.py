# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""roles/cuda_workload/files/run_workloads.py without a GPU: fake workloads that speak the handshake
(READY, wait, iterations, RESULT) and the fake nvidia-cuda-mps-control of the benchmark tests. A fake workload
"connects" to MPS the way the CUDA driver does: only when CUDA_MPS_PIPE_DIRECTORY holds a live daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
FILES = os.path.join(ROOT, "roles", "cuda_workload", "files")
RUNNER = os.path.join(FILES, "run_workloads.py")
sys.path.insert(0, os.path.join(ROOT, "tests", "unit", "benchmarks"))
from fake_exec import FAKE_MPS_CONTROL as FAKE_CONTROL, fake_mps_daemon  # noqa: E402
TRANSCRIPTS = os.path.join(ROOT, "tests", "unit", "fixtures", "h100-transcripts")
sys.path.insert(0, FILES)

import run_workloads  # noqa: E402

FAKE_WORKLOAD = r'''
import json, os, sys, time
pipe = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "")
if os.path.exists(os.path.join(pipe, "control")) and os.path.exists(os.path.join(pipe, "nvidia-cuda-mps-control.pid")):
    os.makedirs(os.path.join(pipe, "sim-clients"), exist_ok=True)
    open(os.path.join(pipe, "sim-clients", str(os.getpid())), "w").close()
behaviour = sys.argv[1] if len(sys.argv) > 1 else "ok"
if behaviour == "no-context":
    print("CUDA error: no CUDA-capable device is detected", flush=True)
    sys.exit(2)
print("READY %d" % os.getpid(), flush=True)
if not sys.stdin.readline():
    sys.exit(0)
if behaviour == "hang":
    time.sleep(600)
for i in range(3):
    print("iteration %d: %.3f ms" % (i, 1.5 + i), flush=True)
check = "wrong results" if behaviour == "wrong" else "ok"
print("RESULT " + json.dumps({"workload": "fake", "pid": os.getpid(), "check": check}), flush=True)
sys.exit(0 if check == "ok" else 1)
'''


@pytest.fixture
def daemon(tmp_path):
    """A running fake MPS control daemon: its pipe directory."""
    with fake_mps_daemon(tmp_path) as pipe:
        yield pipe


def run(tmp_path, mode, pipe, *behaviours, env=None, timeout=30):
    script = tmp_path / "fake_workload.py"
    script.write_text(FAKE_WORKLOAD)
    argv = [sys.executable, RUNNER, "--mode", mode, "--pipe-dir", pipe, "--control-binary", FAKE_CONTROL,
            "--timeout", str(timeout), "--ps-wait", "1"]
    for i, behaviour in enumerate(behaviours):
        argv += ["--workload", "w%d=%s %s %s" % (i, sys.executable, script, behaviour)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30,
                          env=dict(os.environ, **(env or {})), check=False)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return done, report


def test_two_workloads_proven_under_mps(tmp_path, daemon):
    done, report = run(tmp_path, "mps", daemon, "ok", "ok")
    assert done.returncode == 0, done.stderr
    assert report["ok"] and report["problems"] == []
    assert report["client_pipe_directory"] == daemon
    assert [w["under_mps"] for w in report["workloads"]] == [True, True]
    assert all(w["evidence"].startswith("pid %d in ps (server " % w["pid"]) for w in report["workloads"])
    assert report["workloads"][0]["iteration_ms"] == [1.5, 2.5, 3.5]
    assert report["workloads"][0]["median_ms"] == 2.5
    assert "[w0] iteration 2: 3.500 ms" in done.stderr  # progress as it comes


def test_silent_fallback_fails(tmp_path, daemon):
    done, report = run(tmp_path, "mps", daemon, "ok", "ok", env={"FAKE_MPS_HIDE": "1"})
    assert done.returncode == 1
    assert [w["under_mps"] for w in report["workloads"]] == [False, False]
    assert report["problems"] == ["w0, w1 ran WITHOUT MPS: not in `ps` of the daemon in %s (a client whose pipe "
                                  "directory is wrong silently falls back)" % daemon]
    assert all(w["iteration_ms"] == [] for w in report["workloads"])  # they were never let run


def test_no_mps_mode_points_at_an_empty_directory(tmp_path, daemon):
    done, report = run(tmp_path, "no-mps", daemon, "ok", "ok")
    assert done.returncode == 0, done.stderr
    assert report["client_pipe_directory"] != daemon
    assert not os.path.exists(report["client_pipe_directory"])  # removed afterwards
    assert [w["under_mps"] for w in report["workloads"]] == [False, False]


def test_mps_mode_without_daemon(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    done, report = run(tmp_path, "mps", str(empty), "ok")
    assert done.returncode == 1
    assert report["problems"][0].startswith("no MPS control daemon answers in %s: Cannot find MPS control daemon"
                                            % empty)


@pytest.mark.parametrize("behaviour, problem", [
    ("no-context", "never said READY (no CUDA context?)"),
    ("wrong", "w1: wrong results (exit 1)"),
])
def test_failing_workloads_are_reported(tmp_path, daemon, behaviour, problem):
    done, report = run(tmp_path, "mps", daemon, "ok", behaviour)
    assert done.returncode == 1
    assert any(problem in p for p in report["problems"]), report["problems"]


def test_hung_workload_is_stopped(tmp_path, daemon):
    started = time.time()
    done, report = run(tmp_path, "mps", daemon, "ok", "hang", timeout=3)
    assert done.returncode == 1
    assert time.time() - started < 25
    assert "w1 did not finish within --timeout 3 s" in report["problems"]
    pid = report["workloads"][1]["pid"]
    assert not os.path.exists("/proc/%d" % pid) or open("/proc/%d/stat" % pid).read().split(")")[1].split()[0] == "Z"


def test_bad_arguments():
    with pytest.raises(SystemExit):
        run_workloads.main(["--workload", "nocommand"])
    with pytest.raises(SystemExit):
        run_workloads.main([])


def read_transcript(name):
    with open(os.path.join(TRANSCRIPTS, name)) as handle:
        return "\n".join(line for line in handle.read().splitlines() if not line.startswith(("$ ", "[exit")))


def test_the_runner_reads_ps_with_the_collection_parser():
    """The runner has no parser of its own: it imports plugins/module_utils/_mps_output.py (shipped beside it)."""
    assert os.path.samefile(run_workloads.out.__file__, os.path.join(ROOT, "plugins", "module_utils", "_mps_output.py"))
    assert run_workloads.out.parse_ps(read_transcript("22_ps_busy.txt"))[0]["pid"] == 497
    with pytest.raises(ValueError):
        run_workloads.out.parse_ps("Cannot find MPS control daemon process")


def test_a_workload_without_mps_on_the_host_is_not_credited_with_another_client(tmp_path, daemon):
    """Regression: on a host every process shares the initial PID namespace, and a workload whose pid was not in
    `ps` was credited with any other client's row of that namespace: one that silently ran WITHOUT MPS was
    reported as "an MPS client". Here another process is the daemon's client, and the workload runs without MPS."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.makedirs(os.path.join(daemon, "sim-clients"), exist_ok=True)
        open(os.path.join(daemon, "sim-clients", str(other.pid)), "w").close()
        script = tmp_path / "fake_workload.py"
        script.write_text(FAKE_WORKLOAD)
        # `env -u` keeps the pipe directory from the workload: it cannot reach the daemon, as a wrong one would.
        done = subprocess.run(
            [sys.executable, RUNNER, "--mode", "mps", "--pipe-dir", daemon, "--control-binary", FAKE_CONTROL,
             "--timeout", "30", "--ps-wait", "1",
             "--workload", "w0=env -u CUDA_MPS_PIPE_DIRECTORY %s %s ok" % (sys.executable, script)],
            capture_output=True, text=True, timeout=60, check=False)
    finally:
        other.kill()
        other.wait()
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert run_workloads.own_pid_namespace() == "4026531836", "this test needs the host's own PID namespace"
    assert done.returncode == 1
    assert report["workloads"][0]["under_mps"] is False
    assert report["problems"][0].startswith("w0 ran WITHOUT MPS")


def test_namespace_matching_only_where_it_proves_something(tmp_path, monkeypatch):
    monkeypatch.setattr(run_workloads, "own_pid_namespace", lambda: "4026531836")
    assert run_workloads.namespace_for_matching(str(tmp_path)) is None  # the host's own namespace
    monkeypatch.setattr(run_workloads, "own_pid_namespace", lambda: "4026532999")
    assert run_workloads.namespace_for_matching(str(tmp_path)) == "4026532999"  # a pod's, the daemon out of sight
    (tmp_path / "nvidia-cuda-mps-control.pid").write_text(str(os.getpid()))  # a pid we can see, but not a daemon
    assert run_workloads.namespace_for_matching(str(tmp_path)) == "4026532999"


def test_match_by_pid_then_by_pid_namespace():
    rows = [{"pid": 497, "server": 486, "namespace": "4026531836"},
            {"pid": 9001, "server": 486, "namespace": "4026532999"},
            {"pid": 9002, "server": 486, "namespace": "4026532999"}]
    # On the host: PIDs match.
    assert run_workloads.match_clients([497], rows, "4026531836") == {497: "pid 497 in ps (server 486)"}
    # In a pod: PIDs 12 and 13 of the pod's namespace show as 9001 and 9002; one row each.
    found = run_workloads.match_clients([12, 13, 14], rows, "4026532999")
    assert found[12] == "listed as pid 9001 of this PID namespace 4026532999 (server 486)"
    assert found[13] == "listed as pid 9002 of this PID namespace 4026532999 (server 486)"
    assert found[14] is None
    # Another namespace's clients are never ours.
    assert run_workloads.match_clients([12], rows, "4026530000") == {12: None}
