# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tests/gpu/pod_boundary.sh without a GPU: its namespaces, verdicts and cleanup, against fakes.

The fakes (tests/gpu/pod_boundary_fakes) reproduce what the script relies on: a control daemon on a unix
socket in the pipe directory that knows clients by their peer PID (SO_PEERCRED, so a client in a PID
namespace appears with its host PID), and a client that runs on without MPS when the socket is out of
reach. What the real driver does across the IPC, PID and /dev/shm boundaries is what the GPU run measures;
here the plumbing is checked: the pipe bind mount, the hidden /tmp, the host-PID lookup, the verdicts,
and that the script always quits its daemon and removes what it made, even when it is killed.
"""

from __future__ import annotations

import atexit
import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SCRIPT = os.path.join(ROOT, "tests", "gpu", "pod_boundary.sh")
FAKES = os.path.join(ROOT, "tests", "gpu", "pod_boundary_fakes")


def _unshare_works():
    if os.geteuid() != 0:
        return False
    try:
        return subprocess.run(["unshare", "--mount", "--pid", "--fork", "--ipc", "true"], timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_namespaces = pytest.mark.skipif(not _unshare_works(), reason="needs root and unshare (mount, PID, IPC namespaces)")


def _outside_tmp():
    """The fakes and a Python that the cases can still see: the script hides /tmp from them, and a
    checkout (with its .venv) may itself live under /tmp, as CI's may."""
    python = os.path.realpath(sys.executable)
    if not ROOT.startswith("/tmp/"):
        return FAKES, python
    fakes = tempfile.mkdtemp(prefix="gpulab-pb-fakes-", dir="/var/tmp")
    atexit.register(shutil.rmtree, fakes, True)
    for name in os.listdir(FAKES):
        shutil.copy2(os.path.join(FAKES, name), fakes)
    return fakes, python


FAKES_RUN, PYTHON = _outside_tmp()


def env_for(pipe, **extra):
    # The fake control runs `python3` from PATH: the real interpreter's directory comes first.
    env = dict(os.environ, PB_MPS_CONTROL=os.path.join(FAKES_RUN, "nvidia-cuda-mps-control"),
               PB_CLIENT=os.path.join(FAKES_RUN, "cuda_client.py"), PB_NVIDIA_SMI="/nonexistent/nvidia-smi",
               PB_HOLD="3", PB_PIPE=pipe, PB_PYTHON=PYTHON,
               PATH=os.path.dirname(PYTHON) + os.pathsep + os.environ.get("PATH", ""))
    env.update(extra)
    return env


def alive(pid):
    """A live process; a zombie that its reaper has not collected yet counts as gone."""
    try:
        return open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stage_of(out):
    match = re.search(r"^staging directory: (\S+)$", open(os.path.join(out, "env.txt")).read(), re.M)
    return match.group(1) if match else None


def daemon_pid(out):
    match = re.search(r"MPS daemon of this script: pid (\d+)", open(os.path.join(out, "run.log")).read())
    return int(match.group(1)) if match else None


def test_script_parses_and_is_executable():
    assert os.access(SCRIPT, os.X_OK)
    assert subprocess.run(["bash", "-n", SCRIPT], check=False).returncode == 0


def test_script_never_changes_gpu_state():
    """nvidia-smi is only queried: no compute mode, clocks, persistence, power, MIG or reset."""
    forbidden = re.compile(r"(\s-c\s|--compute-mode|-pm\b|--persistence-mode|-ac\b|-rac\b|-lgc\b|-rgc\b|-pl\b|"
                           r"--gpu-reset|\s-r\b|-mig\b|--applications-clocks|-e\s)")
    for number, line in enumerate(open(SCRIPT), 1):
        if "$SMI" in line or "nvidia-smi " in line:
            assert not forbidden.search(line), "line %d changes GPU state: %s" % (number, line)


@needs_namespaces
def test_cases_verdicts_and_cleanup(tmp_path):
    pipe = "/tmp/pb_unit_%d" % os.getpid()
    out = str(tmp_path / "out")
    proc = subprocess.run([SCRIPT, out], env=env_for(pipe, PB_HOLD="5"), capture_output=True, text=True, timeout=170,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {row["case"]: row for row in csv.DictReader(open(os.path.join(out, "summary.tsv")), delimiter="\t")}
    assert list(rows) == ["host", "pod", "pod_hostipc", "pod_nopipe", "pod_hostshm", "pod_hostpid", "seed001"]
    for name, row in rows.items():
        if name == "pod_nopipe":
            assert row["dialtone"] == "no daemon"
            assert row["verdict"] == "NO MPS (silent fallback)"
        else:
            assert row["dialtone"] == "answers", row
            assert row["verdict"] == "MPS", row
            assert "pid in ps" in row["evidence"] and "pid in get_client_list" in row["evidence"]
    # The client in the pod case ran in its own PID namespace and was found by its host PID.
    pod_log = open(os.path.join(out, "case_pod.log")).read()
    nspid = re.search(r"client host pid (\d+), pid in its namespace (\d+)", pod_log)
    assert nspid and nspid.group(1) != nspid.group(2)
    assert "MPS pod boundary" in proc.stdout
    # Everything it made is gone: its daemon, its pipe directory, its staging directory.
    pid = daemon_pid(out)
    assert pid and not alive(pid)
    assert not os.path.exists(pipe)
    assert stage_of(out) and not os.path.exists(stage_of(out))


@needs_namespaces
def test_killed_midway_still_cleans_up(tmp_path):
    pipe = "/tmp/pb_unit_kill_%d" % os.getpid()
    out = str(tmp_path / "out")
    proc = subprocess.Popen([SCRIPT, out], env=env_for(pipe, PB_HOLD="20"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            log = os.path.join(out, "run.log")
            if os.path.exists(log) and "case pod:" in open(log).read():
                break
            time.sleep(0.2)
        else:
            pytest.fail("the script never reached the pod case")
        pid = daemon_pid(out)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert pid and not alive(pid)
    assert not os.path.exists(pipe)
    assert stage_of(out) and not os.path.exists(stage_of(out))
    leftovers = subprocess.run(["pgrep", "-f", FAKES_RUN], capture_output=True, text=True, check=False).stdout.split()
    assert leftovers == []


@needs_namespaces
def test_refuses_a_pipe_directory_in_use(tmp_path):
    pipe = "/tmp/pb_unit_foreign_%d" % os.getpid()
    os.makedirs(pipe)
    env = env_for(pipe)
    control = env["PB_MPS_CONTROL"]
    subprocess.run([control, "-d"], env=dict(env, CUDA_MPS_PIPE_DIRECTORY=pipe), check=True, timeout=10)
    try:
        for dummy in range(50):
            if os.path.exists(os.path.join(pipe, "nvidia-cuda-mps-control.pid")):
                break
            time.sleep(0.1)
        foreign = int(open(os.path.join(pipe, "nvidia-cuda-mps-control.pid")).read())
        proc = subprocess.run([SCRIPT, str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=60,
                              check=False)
        assert proc.returncode == 2
        assert "already listens" in proc.stderr
        assert alive(foreign), "the script must leave a daemon it did not start alone"
    finally:
        subprocess.run([control], input="quit\n", env=dict(env, CUDA_MPS_PIPE_DIRECTORY=pipe), text=True, timeout=10,
                       check=False)
        time.sleep(0.5)
        subprocess.run(["rm", "-rf", pipe], check=False)


def test_bad_knobs_are_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the script checks root first")
    proc = subprocess.run([SCRIPT, str(tmp_path / "out")], env=env_for("/run/not_tmp"), capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "must be under /tmp" in proc.stderr
