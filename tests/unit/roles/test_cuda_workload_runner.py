# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""roles/cuda_workload/files/run_workloads.py without a GPU: fake workloads that speak the handshake
(READY, wait, iterations, RESULT) and the fake nvidia-cuda-mps-control of the benchmark tests, spoken to through the
collection's client. A fake workload "connects" to MPS the way the CUDA driver does: only when CUDA_MPS_PIPE_DIRECTORY
holds a live daemon (GPULAB_SIM_NO_MPS=1: it silently does not). The seeds' experiment runs on the simulated GPU of
tests/unit/roles/fakes/fake_gpu.py."""

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
from fake_exec import FAKE_MPS_CONTROL as FAKE_CONTROL, executable, fake_mps_daemon  # noqa: E402
import fake_mps_control  # noqa: E402
TRANSCRIPTS = os.path.join(ROOT, "tests", "unit", "fixtures", "h100-transcripts")
sys.path.insert(0, FILES)

import run_workloads  # noqa: E402

FAKE_WORKLOAD = r'''
import json, os, sys, time
pipe = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "")
if os.path.exists(os.path.join(pipe, "control")) and os.path.exists(os.path.join(pipe, "nvidia-cuda-mps-control.pid")) \
        and not os.environ.get("GPULAB_SIM_NO_MPS"):
    os.makedirs(os.path.join(pipe, "sim-clients"), exist_ok=True)
    with open(os.path.join(pipe, "sim-clients", str(os.getpid())), "w") as handle, open("/proc/self/stat") as stat:
        handle.write(stat.read().rsplit(")", 1)[1].split()[19])
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
    assert all(w["evidence"].startswith("pid %d in get_client_list of server " % w["pid"]) for w in report["workloads"])
    server = report["workloads"][0]["evidence"].split()[-1]
    assert sorted(report["client_lists"][server]) == sorted(w["pid"] for w in report["workloads"])
    assert report["workloads"][0]["iteration_ms"] == [1.5, 2.5, 3.5]
    assert report["workloads"][0]["median_ms"] == 2.5
    assert "[w0] iteration 2: 3.500 ms" in done.stderr  # progress as it comes


def test_silent_fallback_fails(tmp_path, daemon):
    done, report = run(tmp_path, "mps", daemon, "ok", "ok", env={"GPULAB_SIM_NO_MPS": "1"})
    assert done.returncode == 1
    assert [w["under_mps"] for w in report["workloads"]] == [False, False]
    assert report["problems"] == ["w0, w1 ran WITHOUT MPS: in no get_client_list of the daemon in %s (a client whose "
                                  "pipe directory is wrong silently falls back)" % daemon]
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
    assert report["problems"] == ["cannot prove the workloads run under MPS: no MPS control daemon answers in %s"
                                  % empty]


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


def test_the_runner_speaks_to_mps_only_through_the_collection_client():
    """The runner has no parser, no binary finder and no CLI call of its own: it imports the collection's client
    (plugins/module_utils/_mps_control.py) and its parser, from the checkout here."""
    assert os.path.realpath(run_workloads.out.__file__) == os.path.join(ROOT, "plugins", "module_utils",
                                                                        "_mps_output.py")
    assert os.path.realpath(sys.modules[run_workloads.MpsControl.__module__].__file__) == os.path.join(
        ROOT, "plugins", "module_utils", "_mps_control.py")
    with open(RUNNER) as handle:
        text = handle.read()
    assert "CONTROL_BINARY" not in text and "shutil.which" not in text and "BINARY_DIRECTORIES" not in text


def test_the_cli_gets_the_clients_environment_not_the_callers(tmp_path, daemon):
    """The control binary runs with the environment MpsControl builds (the pipe and log directories, root's PATH),
    never the caller's: here a CUDA_VISIBLE_DEVICES and an LD_PRELOAD in the runner's environment do not reach it."""
    spy = tmp_path / "spy"
    spy.write_text('#!/bin/sh\nenv > %s\nexec %s "$@"\n' % (tmp_path / "cli-env", FAKE_CONTROL))
    spy.chmod(0o755)
    script = tmp_path / "fake_workload.py"
    script.write_text(FAKE_WORKLOAD)
    done = subprocess.run([sys.executable, RUNNER, "--mode", "mps", "--pipe-dir", daemon, "--control-binary", str(spy),
                           "--timeout", "30", "--ps-wait", "1", "--workload", "w0=%s %s ok" % (sys.executable, script)],
                          capture_output=True, text=True, timeout=60, check=False,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES="7", LD_PRELOAD="/nonexistent.so"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    seen = dict(line.split("=", 1) for line in (tmp_path / "cli-env").read_text().splitlines() if "=" in line)
    assert seen["CUDA_MPS_PIPE_DIRECTORY"] == daemon
    assert "CUDA_VISIBLE_DEVICES" not in seen and "LD_PRELOAD" not in seen
    assert seen["PATH"].startswith(str(tmp_path) + ":")


def test_a_forged_ps_row_proves_nothing():
    """A client's argv[0] can print a whole `ps` row: the proof is a server's get_client_list. In a pod's own PID
    namespace a row is used only when every row naming its PID agrees that it is of this namespace."""
    lists = {486: [497, 9001]}
    rows = [{"pid": 9001, "server": 486, "namespace": "4026532999"},
            {"pid": 9001, "server": 486, "namespace": "4026531836"}]  # the same PID, two namespaces: one is forged
    assert run_workloads.match_clients([12], lists, rows, "4026532999") == {12: None}
    # Not in a client list: no proof, whatever ps says.
    assert run_workloads.match_clients([497, 498], {486: [497]}, [], None) == {
        497: "pid 497 in get_client_list of server 486", 498: None}


def test_a_workload_without_mps_on_the_host_is_not_credited_with_another_client(tmp_path, daemon):
    """Regression: on a host every process shares the initial PID namespace, and a workload whose pid was not in
    `ps` was credited with any other client's row of that namespace: one that silently ran WITHOUT MPS was
    reported as "an MPS client". Here another process is the daemon's client, and the workload runs without MPS."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.makedirs(os.path.join(daemon, "sim-clients"), exist_ok=True)
        with open(os.path.join(daemon, "sim-clients", str(other.pid)), "w") as handle:
            handle.write(fake_mps_control.start_time(other.pid))
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


class FakeControl(object):
    """Stands for MpsControl: whether the daemon's process is one this process can see."""

    def __init__(self, visible):
        self.visible = visible

    def daemon_pid(self):
        return 1234 if self.visible else None


def test_namespace_matching_only_where_it_proves_something(monkeypatch):
    monkeypatch.setattr(run_workloads, "own_pid_namespace", lambda: "4026531836")
    assert run_workloads.namespace_for_matching(FakeControl(False)) is None  # the host's own namespace
    monkeypatch.setattr(run_workloads, "own_pid_namespace", lambda: "4026532999")
    assert run_workloads.namespace_for_matching(FakeControl(False)) == "4026532999"  # a pod's, the daemon out of sight
    assert run_workloads.namespace_for_matching(FakeControl(True)) is None  # the daemon is visible: shared namespace


def test_match_by_pid_then_by_pid_namespace():
    lists = {486: [497, 9001, 9002]}
    rows = [{"pid": 497, "server": 486, "namespace": "4026531836"},
            {"pid": 9001, "server": 486, "namespace": "4026532999"},
            {"pid": 9002, "server": 486, "namespace": "4026532999"}]
    # On the host: PIDs match.
    assert run_workloads.match_clients([497], lists, rows, None) == {497: "pid 497 in get_client_list of server 486"}
    # In a pod: PIDs 12 and 13 of the pod's namespace show as 9001 and 9002; one row each.
    found = run_workloads.match_clients([12, 13, 14], lists, rows, "4026532999")
    assert found[12] == "listed as pid 9001 of this PID namespace 4026532999 (get_client_list of server 486)"
    assert found[13] == "listed as pid 9002 of this PID namespace 4026532999 (get_client_list of server 486)"
    assert found[14] is None
    # Another namespace's clients are never ours.
    assert run_workloads.match_clients([12], lists, rows, "4026530000") == {12: None}


# --- the seeds' experiment ---------------------------------------------------------------------------------------

FAKE_GPU_PYTHON = executable(os.path.join(HERE, "fakes", "fake_gpu.py"), "python3")
GROUPS = [
    "matmul/matmul-0=%s /w/matmul_worker.py --size 64 --iterations 3 --handshake" % FAKE_GPU_PYTHON,
    "matmul/matmul-1=%s /w/matmul_worker.py --size 64 --iterations 3 --handshake" % FAKE_GPU_PYTHON,
    "kernel_pair/add=%s /w/kernel_pair.py --kernel add --blocks 4 --iterations 3 --handshake" % FAKE_GPU_PYTHON,
    "kernel_pair/scale=%s /w/kernel_pair.py --kernel scale --blocks 4 --iterations 3 --handshake" % FAKE_GPU_PYTHON,
]


def test_the_experiment_runs_every_configuration_proves_each_client_and_tabulates(tmp_path, daemon):
    out = tmp_path / "out"
    argv = [sys.executable, RUNNER, "--experiment", "--pipe-dir", daemon, "--control-binary", FAKE_CONTROL,
            "--timeout", "60", "--ps-wait", "2", "--out", str(out)]
    for item in GROUPS:
        argv += ["--workload", item]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["schema"] == "gpulab.mps/seed-experiment/1" and report["ok"] and report["problems"] == []
    # Time-slicing first (before an MPS server runs), each group alone then together.
    assert [(r["mode"], r["group"], len(r["workloads"])) for r in report["runs"]] == [
        ("no-mps", "matmul", 1), ("no-mps", "matmul", 2), ("no-mps", "kernel_pair", 1), ("no-mps", "kernel_pair", 2),
        ("mps", "matmul", 1), ("mps", "matmul", 2), ("mps", "kernel_pair", 1), ("mps", "kernel_pair", 2)]
    # Each client proven: in a server's client list under MPS, in none under time-slicing.
    for run in report["runs"]:
        for worker in run["workloads"]:
            assert worker["under_mps"] is (run["mode"] == "mps")
            assert (worker["evidence"] or "").startswith("pid %d in get_client_list" % worker["pid"]) is worker[
                "under_mps"]
    rows = report["table"]
    assert [(r["workload"], r["run"], r["proven"]) for r in rows] == [
        ("matmul 64x64 float32, 3 iterations (seed 002)", "1 alone, time-slicing", "not an MPS client"),
        ("", "1 alone, MPS", "an MPS client"),
        ("", "2 at once, time-slicing", "0 of 2 MPS clients"),
        ("", "2 at once, MPS", "2 of 2 MPS clients"),
        ("kernel pair add + scale, 4 blocks each (seed 003)", "1 alone, time-slicing", "not an MPS client"),
        ("", "1 alone, MPS", "an MPS client"),
        ("", "2 at once, time-slicing", "0 of 2 MPS clients"),
        ("", "2 at once, MPS", "2 of 2 MPS clients")]
    assert all(r["aggregate"] > 0 and len(r["seconds"]) == r["clients"] for r in rows)
    assert [r["unit"] for r in rows] == ["TFLOP/s"] * 4 + ["kernels/s"] * 4
    assert all(r["ratio"] > 0 and r["says"].startswith("x") for r in rows if r["mode"] == "mps")
    assert not [r for r in rows if r["mode"] == "no-mps" and (r["ratio"] or r["says"])]
    # The same table as JSON and markdown in --out, and on stderr for a person.
    assert json.loads((out / "seed_experiment.json").read_text())["table"] == rows
    markdown = (out / "seed_experiment.md").read_text()
    assert report["table_text"] in markdown and report["table_text"] in done.stderr
    assert markdown.count("\n| ") == 9
    assert "The daemon's defaults: 100 % of the SMs per client, no pinned memory limit." in markdown


def test_an_experiment_with_a_client_without_mps_fails_and_says_which(tmp_path, daemon):
    argv = [sys.executable, RUNNER, "--experiment", "--modes", "mps", "--pipe-dir", daemon, "--control-binary",
            FAKE_CONTROL, "--timeout", "60", "--ps-wait", "1"] + ["--workload=" + g for g in GROUPS[2:]]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          env=dict(os.environ, GPULAB_SIM_NO_MPS="1"))
    assert done.returncode == 1
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["problems"][0].startswith("kernel_pair, 1 alone, mps: add ran WITHOUT MPS")
    assert [r["says"] for r in report["table"]] == ["not measured (the run failed)"] * 2


def run_of(mode, seconds, units=("matmul", 4096), servers=None, started=0.0):
    """A run report as run_once makes it, with workers that each took `seconds` (all starting at `started`)."""
    workers = []
    for i, took in enumerate(seconds):
        result = {"workload": units[0], "size": units[1], "ms": [took * 100.0] * 10} if units[0] == "matmul" else {
            "workload": "kernel_pair", "blocks": 4, "ms": [took * 100.0] * 10}
        workers.append({"name": "w%d" % i, "pid": 100 + i, "under_mps": mode == "mps", "seconds": took,
                        "started_at": started, "ended_at": started + took, "iteration_ms": [took * 100.0] * 10,
                        "result": result})
    return {"mode": mode, "ok": True, "workloads": workers, "servers": servers or {},
            "group": units[0], "together": len(seconds) > 1}


H200_MATMUL_WITHOUT_LIMITS = [run_of("no-mps", [0.028]), run_of("no-mps", [0.053, 0.054]),
                              run_of("mps", [0.027]), run_of("mps", [0.048, 0.048])]


def test_the_table_of_the_h200_hand_measurement_without_limits():
    """Issue 21's hand measurement (H200, MPS without limits): the MPS pair is a little faster than the time-slicing
    pair, and one worker alone gains nothing."""
    rows = run_workloads.seed_table(H200_MATMUL_WITHOUT_LIMITS)
    assert [r["run"] for r in rows] == ["1 alone, time-slicing", "1 alone, MPS", "2 at once, time-slicing",
                                        "2 at once, MPS"]
    assert round(rows[0]["aggregate"], 1) == 49.1 and round(rows[3]["aggregate"], 1) == 57.3
    assert rows[1]["says"] == "x1.04: even: one client alone gains nothing from MPS"
    assert rows[3]["says"] == ("x1.12: MPS wins a little: time-slicing pays for context switches; one worker already "
                               "fills the GPU, so two at once add little")
    table = run_workloads.render_table(rows)
    assert "| matmul 4096x4096 float32, 10 iterations (seed 002) | 1 alone, time-slicing | not an MPS client | 0.028 " \
           "| 49.1 TFLOP/s |  |" in table
    assert "|  | 2 at once, MPS | 2 of 2 MPS clients | 0.048, 0.048 | 57.3 TFLOP/s | x1.12: MPS wins a little" in table


def test_where_mps_loses_the_table_says_so_and_why():
    """Issue 21's lab daemon (25 % of the SMs, 35G per client): one worker alone 4.6 times slower, the pair 2.4 times
    slower than time-slicing. The table says MPS LOSES, and names the server's limits read back from it."""
    held = {"4242": {"active_thread_percentage": 25.0, "pinned_memory_limit": "35G"}}
    runs = [run_of("no-mps", [0.028]), run_of("no-mps", [0.053, 0.054]),
            run_of("mps", [0.129], servers=held), run_of("mps", [0.130, 0.130], servers=held)]
    rows = run_workloads.seed_table(runs)
    assert rows[1]["says"] == ("x0.22: MPS LOSES: one client alone gains nothing from MPS, and its server (4242) holds "
                               "each client to 25 % of the SMs and to 35G of pinned memory")
    assert rows[3]["says"] == ("x0.42: MPS LOSES: its server (4242) holds each client to 25 % of the SMs and to 35G of "
                               "pinned memory")


def test_the_kernel_pair_side_by_side_wins():
    pair = ("kernel_pair", None)
    runs = [run_of("no-mps", [0.010], units=pair), run_of("no-mps", [0.020, 0.020], units=pair),
            run_of("mps", [0.010], units=pair), run_of("mps", [0.010, 0.011], units=pair)]
    rows = run_workloads.seed_table(runs)
    assert rows[0]["workload"] == "kernel pair add + scale, 4 blocks each (seed 003)"
    assert rows[3]["says"] == "x1.82: MPS wins: the workers ran side by side"
    assert rows[3]["unit"] == "kernels/s" and round(rows[3]["aggregate"]) == 1818


def test_a_table_without_time_slicing_or_with_a_failed_run():
    rows = run_workloads.seed_table([run_of("mps", [0.027]), dict(run_of("mps", [0.048, 0.048]), ok=False)])
    assert rows[0]["says"] == "no time-slicing run to compare with"
    assert rows[1]["aggregate"] is None and rows[1]["says"] == "not measured (the run failed)"
    assert "|  | 2 at once, MPS | 2 of 2 MPS clients | 0.048, 0.048 | - | not measured" in run_workloads.render_table(rows)


@pytest.mark.parametrize("held, says", [
    ({"7": {"active_thread_percentage": 100.0, "pinned_memory_limit": "35G"}},
     "x0.42: MPS LOSES: its server (7) holds each client to 35G of pinned memory"),
    ({"7": {"active_thread_percentage": 25.0, "pinned_memory_limit": None}},
     "x0.42: MPS LOSES: its server (7) holds each client to 25 % of the SMs"),
    ({}, "x0.42: MPS LOSES"),
])
def test_the_reasons_of_a_loss_are_the_limits_the_server_holds(held, says):
    runs = [run_of("no-mps", [0.028]), run_of("no-mps", [0.053, 0.054]),
            run_of("mps", [0.129], servers=held), run_of("mps", [0.130, 0.130], servers=held)]
    rows = run_workloads.seed_table(runs)
    # Two at once under MPS bring x2 over one alone under MPS: not "fills the GPU"; only the limits are a reason.
    assert rows[3]["says"] == says


def test_even_work_that_fills_the_gpu_says_so():
    runs = [run_of("no-mps", [0.028]), run_of("no-mps", [0.056, 0.056]), run_of("mps", [0.028]),
            run_of("mps", [0.055, 0.055])]
    assert run_workloads.seed_table(runs)[3]["says"] == (
        "x1.02: even: one worker already fills the GPU, so two at once add little")
