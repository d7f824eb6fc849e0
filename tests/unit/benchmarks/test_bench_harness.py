# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The benchmark's orchestration, end to end without a GPU: benchmarks/mps_benchmark.py with simulated clients
(mps_bench_client.py --backend sim) and a fake nvidia-cuda-mps-control (fake_mps_control.py beside this file).

What is checked is the harness, never speed: the plan runs in both modes, clients are proven MPS clients or
not, a client that silently runs without MPS fails the MPS mode, a hung client times out, a signal stops it,
and in every case the script leaves no process behind and quits the daemon it started (never one it did not).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
SCRIPT = os.path.join(ROOT, "benchmarks", "mps_benchmark.py")
sys.path.insert(0, HERE)
from fake_exec import FAKE_MPS_CONTROL as FAKE  # noqa: E402
TRANSCRIPTS = os.path.join(ROOT, "tests", "unit", "fixtures", "h100-transcripts")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import mps_benchmark as bench  # noqa: E402

SMALL = ["--backend", "sim", "--control-binary", FAKE, "--ns", "1,4", "--workloads", "spin,matmul",
         "--repeats", "2", "--duration", "0.2", "--sim-ms", "2", "--start-timeout", "30"]


def alive(pid):
    return bench.pid_alive(int(pid))


def run_bench(tmp_path, *extra, env=None, timeout=120):
    out = tmp_path / "out"
    full_env = dict(os.environ, PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    done = subprocess.run([sys.executable, SCRIPT, "--out", str(out)] + SMALL + list(extra), capture_output=True,
                          text=True, timeout=timeout, env=full_env, check=False)
    result = None
    if (out / "mps_benchmark.json").exists():
        result = json.loads((out / "mps_benchmark.json").read_text())
    return done, result, out


def started_pids(result):
    """Every process the benchmark started that could outlive it: probe, clients, its own daemon."""
    pids = [result["probe"]["pid"]]
    for check in result["checks"]:
        pids.extend(check["pids"])
    daemon = result["environment"]["daemon"]
    if daemon and daemon["own"] and daemon["pid"]:
        pids.append(daemon["pid"])
    return pids


def assert_nothing_left(pids):
    deadline = time.time() + 5
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    assert [p for p in pids if alive(p)] == []


def test_both_modes_measured_checked_and_cleaned_up(tmp_path):
    done, result, out = run_bench(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(os.listdir(str(out))) >= ["mps_benchmark.json", "mps_benchmark.log", "mps_benchmark.md"]
    # Every configuration in both modes, every repeat.
    assert [(r["workload"], r["n"]) for r in result["rows"]] == [("spin", 1), ("spin", 4), ("matmul", 1),
                                                                 ("matmul", 4)]
    assert all(r["ts"] and r["mps"] and r["ts_repeats"] == 2 and r["mps_repeats"] == 2 for r in result["rows"])
    assert len(result["runs"]) == 2 * 2 * 2 * 2
    # The membership checks, at the start and at the end of each mode, over the 4 clients of the pool.
    starts = dict((c["mode"], c) for c in result["checks"] if c["when"] == "start")
    assert starts["ts"]["ok"] and starts["ts"]["listed"] == [] and len(starts["ts"]["pids"]) == 4
    assert starts["mps"]["ok"] and starts["mps"]["listed"] == starts["mps"]["pids"]
    assert set(starts["ts"]["pids"]).isdisjoint(starts["mps"]["pids"])
    assert [c["ok"] for c in result["checks"]] == [True] * 4
    assert result["problems"] == []
    # The one client of the collection spoke to the daemon (from the checkout, through a temporary collection path).
    assert result["environment"]["mps_client"] == os.path.join(ROOT, "plugins", "module_utils", "_mps_control.py")
    # The summary table comes last, after the cleanup messages.
    tail = [line for line in done.stdout.rstrip().splitlines() if not line.startswith("note: PNG not written")]
    first = max(i for i, line in enumerate(tail) if line.startswith("MPS benchmark: simulated GPU"))
    assert "MPS control daemon" in "\n".join(tail[:first]) and "stopped" in "\n".join(tail[:first])
    assert tail[first + 1].split() == ["work", "N", "TS/s", "MPS/s", "MPS/TS", "ideal", "eff", "TS", "p50", "MPS",
                                       "p50", "verdict"]
    assert tail[-2].startswith("check: MPS off: 4/4 clients are NOT MPS clients")
    assert tail[-1].startswith("check: MPS on: 4/4 clients are MPS clients")
    # The private daemon was quit, its folders removed, and no process is left.
    assert not os.path.exists(result["environment"]["daemon"]["pipe_directory"])
    assert_nothing_left(started_pids(result))
    markdown = (out / "mps_benchmark.md").read_text()
    assert "| spin | 4 |" in markdown and "## What MPS buys here, and where it does not help" in markdown


def test_clients_that_silently_run_without_mps_fail_the_mps_mode(tmp_path):
    """The fake daemon lists nobody: exactly what a client whose pipe directory is wrong looks like."""
    done, result, _out = run_bench(tmp_path, "--ps-wait", "1", env={"GPULAB_SIM_NO_MPS": "1"})
    assert done.returncode == 1
    mps = [c for c in result["checks"] if c["mode"] == "mps"]
    assert len(mps) == 1 and not mps[0]["ok"] and len(mps[0]["missing"]) == 4
    assert any("are in NO get_client_list of the MPS daemon" in p for p in result["problems"])
    assert all(r["ts"] is not None and r["mps"] is None for r in result["rows"])
    assert "mode mps is not measured" in done.stdout
    assert "PROBLEM: 4 of 4 clients are in NO get_client_list" in done.stdout.splitlines()[-1]
    assert_nothing_left(started_pids(result))


def test_a_hung_client_times_out_and_is_killed(tmp_path):
    done, result, _out = run_bench(tmp_path, "--ns", "1", "--workloads", "spin", "--repeats", "1",
                                   "--run-timeout", "1", "--sim-fail", "hang", timeout=90)
    assert done.returncode == 1
    failed = [r for r in result["runs"] if r.get("error")]
    assert [(r["mode"], r["n"]) for r in failed] == [("ts", 1), ("mps", 1)]
    assert all("no 'result' within" in r["error"] for r in failed)
    assert_nothing_left(started_pids(result))


def test_a_client_that_cannot_start_is_reported(tmp_path):
    done, result, _out = run_bench(tmp_path, "--ns", "1", "--repeats", "1", "--sim-fail", "init")
    assert done.returncode in (1, 2)
    assert "simulated start-up failure" in done.stdout
    assert result["runs"] == []
    assert_nothing_left(started_pids(result))


def test_sigterm_stops_cleans_up_and_reports_what_was_measured(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, SCRIPT, "--out", str(out)] + SMALL + ["--repeats", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "[3/" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest, _err = proc.communicate(timeout=60)
    text = "".join(lines) + rest
    assert proc.returncode == 1, text[-3000:]
    assert "INTERRUPTED (signal %d)" % signal.SIGTERM in text
    result = json.loads((out / "mps_benchmark.json").read_text())
    assert any("interrupted" in p for p in result["problems"])
    assert 3 <= len(result["runs"]) < 2 * 2 * 2 * 20
    assert_nothing_left(started_pids(result))


def test_sigkill_leaves_no_client_behind(tmp_path):
    """Clients die with the benchmark (PR_SET_PDEATHSIG), even when it gets no chance to clean up."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, SCRIPT, "--out", str(out)] + SMALL + ["--repeats", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    clients, daemon = [], None
    for line in proc.stdout:
        match = re.search(r"MPS control daemon started: pid (\d+)", line)
        if match:
            daemon = int(match.group(1))
        match = re.search(r"clients ready in [0-9.]+ s \(pids ([0-9 ]+)\)", line)
        if match:
            clients = [int(p) for p in match.group(1).split()]
            break
    try:
        assert clients and all(alive(p) for p in clients)
        proc.kill()
        proc.wait(timeout=10)
        assert_nothing_left(clients)
    finally:
        proc.stdout.close()
        if daemon and alive(daemon):  # a real daemon would survive SIGKILL of its starter too
            os.kill(daemon, signal.SIGTERM)


def test_given_daemon_is_used_and_left_running(tmp_path):
    pipe, log = tmp_path / "pipe", tmp_path / "log"
    pipe.mkdir()
    log.mkdir()
    env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=str(pipe), CUDA_MPS_LOG_DIRECTORY=str(log))
    assert subprocess.run([FAKE, "-d"], env=env, timeout=10, check=False).returncode == 0
    deadline = time.time() + 10
    while not (pipe / "nvidia-cuda-mps-control.pid").exists() and time.time() < deadline:
        time.sleep(0.05)
    daemon = int((pipe / "nvidia-cuda-mps-control.pid").read_text())
    try:
        done, result, _out = run_bench(tmp_path, "--pipe-dir", str(pipe), "--log-dir", str(log), "--ns", "1,2",
                                       "--repeats", "1")
        assert done.returncode == 0, done.stdout[-3000:]
        assert result["environment"]["daemon"] == {"pipe_directory": str(pipe), "own": False, "pid": None}
        assert "using the MPS daemon that runs in %s" % pipe in done.stdout
        assert "MPS control daemon started" not in done.stdout
        assert alive(daemon)  # not ours to stop
        on = [c for c in result["checks"] if c["mode"] == "mps" and c["when"] == "start"][0]
        assert on["ok"] and on["pipe_directory"] == str(pipe)
        assert_nothing_left(started_pids(result))
    finally:
        subprocess.run([FAKE], input="quit\n", text=True, env=env, timeout=10, check=False)


def test_given_pipe_dir_without_daemon_is_an_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done, result, _out = run_bench(tmp_path, "--pipe-dir", str(empty))
    assert done.returncode == 2
    assert "no MPS control daemon answers in %s (--pipe-dir)" % empty in done.stdout
    assert result is None


def test_dry_run_touches_nothing(tmp_path):
    done, result, out = run_bench(tmp_path, "--dry-run")
    assert done.returncode == 0
    assert "dry run: nothing started" in done.stdout
    assert "plan: workloads spin,matmul; N 1,4; modes ts,mps; 2 repeats of 0.20 s; 16 runs" in done.stdout
    assert not out.exists() and result is None


@pytest.mark.parametrize("argv, message", [
    (["--ns", "1,64"], "between 1 and 48"),
    (["--workloads", "spin,fft"], "unknown workload"),
    (["--modes", "mps,other"], "--modes takes ts and/or mps"),
    (["--repeats", "0", "--duration", "1"], None),  # 0 means "the preset's": accepted
])
def test_arguments_are_validated(argv, message, capsys):
    if message is None:
        assert bench.parse_args(argv).repeats == 3
        return
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


def test_presets():
    full, quick = bench.parse_args([]), bench.parse_args(["--quick"])
    assert (full.ns, full.workloads, full.repeats, full.duration) == ([1, 2, 4, 8, 16], ["spin", "matmul", "copy"],
                                                                      3, 1.0)
    assert (quick.ns, quick.workloads, quick.duration) == ([1, 4, 8, 16], ["spin", "matmul"], 0.3)
    # The plans stay inside the lead's budget: runs alone, before client start-up (about 30 s on an H100).
    assert bench.estimate(full) < 170
    assert bench.estimate(quick) < 45


def read_transcript(name):
    with open(os.path.join(TRANSCRIPTS, name)) as handle:
        lines = handle.read().splitlines()
    return "\n".join(line for line in lines if not line.startswith("$ ") and not line.startswith("[exit"))


def test_the_collection_client_is_found_from_a_bare_checkout():
    """On the GPU host the script runs from a checkout without `make collection`: it imports the collection's one
    client (plugins/module_utils/_mps_control.py) and one parser through a temporary collection path, and has no door
    to MPS of its own."""
    code = ("import os, sys; sys.path.insert(0, %r); import mps_benchmark as b; "
            "print(b.mps_control.__file__, os.path.realpath(b.mps_control.__file__)); "
            "print(os.path.realpath(b.mps_out.__file__))" % os.path.join(ROOT, "benchmarks"))
    env = dict((k, v) for k, v in os.environ.items() if k != "PYTHONPATH")
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, timeout=30,
                          cwd="/", check=False)
    assert done.returncode == 0, done.stderr
    client, real, parser = done.stdout.split()
    assert "/ansible_collections/gpulab/mps/plugins/module_utils/" in client
    assert real == os.path.join(ROOT, "plugins", "module_utils", "_mps_control.py")
    assert parser == os.path.join(ROOT, "plugins", "module_utils", "_mps_output.py")
    assert not os.path.exists(client.split("/ansible_collections/")[0])  # the temporary collection path is gone


def test_a_lib_directory_is_used_when_given(tmp_path):
    """--lib DIR: the collection's client from DIR/ansible_collections/gpulab/mps (where mps_client installs it, or the
    copy the benchmark playbook ships), not from the checkout; a DIR without it stops the script, saying so."""
    lib = tmp_path / "lib"
    utils = lib / "ansible_collections" / "gpulab" / "mps" / "plugins"
    shutil.copytree(os.path.join(ROOT, "plugins", "module_utils"), str(utils / "module_utils"))
    code = "import mps_benchmark as b; print(b.client_file())"
    env = dict((k, v) for k, v in os.environ.items() if k != "PYTHONPATH")
    env["PYTHONPATH"] = os.path.join(ROOT, "benchmarks")
    done = subprocess.run([sys.executable, "-S", "-c", code, "--lib", str(lib)], capture_output=True, text=True,
                          env=env, timeout=30, cwd="/", check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(utils / "module_utils" / "_mps_control.py")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "mps_benchmark.py"), "--lib",
                           str(tmp_path), "--dry-run"], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode != 0
    assert "--lib %s does not hold ansible_collections/gpulab/mps/plugins/module_utils/_mps_control.py" % tmp_path \
        in done.stderr


def test_recorded_ps_gives_the_client_pid():
    rows = bench.mps_out.parse_ps(read_transcript("22_ps_busy.txt"))
    assert [(r["pid"], r["server"], r["device"]) for r in rows] == [(497, 486, "GPU-058fcf08-fc4a-49f5")]


class FakeDaemon(object):
    """Stands for Daemon: its servers' client lists (get_client_list) name the given PIDs."""

    pipe_dir = "/tmp/pipe-of-test"

    def __init__(self, pids):
        self.pids = pids

    def client_lists(self):
        return {486: list(self.pids)} if self.pids else {}


@pytest.mark.parametrize("want_mps, listed, nvml_mps, ok, disagrees", [
    (True, [11, 12], {11, 12}, True, False),
    (True, [11], {11, 12}, False, False),          # 12 silently runs without MPS: the mode is refused
    (True, [11, 12], set(), True, False),          # NVML does not list them: a note, not a failure
    (False, [], set(), True, False),
    (False, [12], set(), False, False),            # an "MPS off" client in the daemon's client list
    (False, [], {12}, True, True),                 # only NVML says so: reported, the mode still runs
])
def test_membership_check(monkeypatch, want_mps, listed, nvml_mps, ok, disagrees):
    monkeypatch.setattr(bench, "nvml_processes", lambda: {"compute": {11, 12}, "mps": nvml_mps, "driver": "580"})
    notes = []
    result = bench.check_membership("mps" if want_mps else "ts", [11, 12], FakeDaemon(listed), want_mps,
                                    notes.append, "/tmp/empty", wait=0)
    assert result["ok"] is ok
    assert bool(result.get("witness_disagrees")) is disagrees
    assert result["listed"] == sorted(listed)
    if want_mps and not ok:
        assert result["problems"] == ["1 of 2 clients are in NO get_client_list of the MPS daemon in /tmp/pipe-of-test "
                                      "(PIDs [12]): they run without MPS"]
    if want_mps and ok:
        assert result["line"].startswith("MPS on: 2/2 clients are MPS clients (server 486)")
    if not want_mps and ok:
        assert result["line"].startswith("MPS off: 2/2 clients are NOT MPS clients (pipe directory /tmp/empty")


def test_membership_check_without_nvml(monkeypatch):
    monkeypatch.setattr(bench, "nvml_processes", lambda: None)
    result = bench.check_membership("mps", [11], FakeDaemon([11]), True, print, "/e", wait=0)
    assert result["ok"] and result["nvml"] is None
    assert result["line"].endswith("by get_client_list of /tmp/pipe-of-test")


def test_a_ps_row_is_no_proof(monkeypatch):
    """A client's argv[0] can print a whole `ps` row naming any PID (the H200 did print them): the proof is the
    server's client list, which no user writes. A daemon whose ps would show PID 12 but whose lists do not is not
    taken to serve 12."""

    class Forged(FakeDaemon):
        def ps(self, lists=None):
            return [{"pid": 12, "server": 486, "namespace": "4026531836", "command": "forged"}]

    monkeypatch.setattr(bench, "nvml_processes", lambda: None)
    result = bench.check_membership("mps", [11, 12], Forged([11]), True, print, "/e", wait=0)
    assert not result["ok"] and result["missing"] == [12]
