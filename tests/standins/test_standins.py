# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The stand-ins must say exactly what the real H100 said: each recorded command is replayed
against them, in the recorded order, and stdout and the exit code are compared byte for byte.

The transcripts are read from tests/unit/fixtures/h100-transcripts when the collection carries a
copy, else from ../shared/reference/h100-transcripts beside the checkout.
"""

from __future__ import annotations

import importlib
import os
import re
import stat
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CONTROL = os.path.join(HERE, "nvidia-cuda-mps-control")
CANDIDATES = [os.path.join(ROOT, "tests", "unit", "fixtures", "h100-transcripts"),
              os.path.join(ROOT, "..", "shared", "reference", "h100-transcripts")]
TRANSCRIPTS = next((p for p in CANDIDATES if os.path.isdir(p)), None)

pytestmark = pytest.mark.skipif(TRANSCRIPTS is None, reason="no copy of the H100 transcripts found in %s" % CANDIDATES)

# The command-line transcripts that a daemon with no client can replay, in the recorded order.
REPLAYED = ["00_control_no_daemon", "01_start_daemon", "02_start_daemon_again", "04_server_list_empty",
            "05_ps_empty", "06_get_default_atp", "07_set_default_atp_50", "08_set_default_atp_bad",
            "09_set_default_atp_garbage", "10_get_pinned_unset", "11_set_pinned_4G", "12_get_pinned_4G",
            "13_set_pinned_1536M", "14_get_pinned_after_M", "15_set_pinned_bad", "16_unknown_cmd"]


def read_transcript(name):
    """(shell command, expected stdout, expected rc) of one `$ cmd / output / [exit N]` transcript."""
    with open(os.path.join(TRANSCRIPTS, name + ".txt")) as handle:
        lines = handle.read().splitlines()
    assert lines[0].startswith("$ ")
    rc = int(re.match(r"^\[exit (\d+)\]$", lines[-1]).group(1))
    return lines[0][2:], "".join(line + "\n" for line in lines[1:-1]), rc


@pytest.fixture
def mps_env(tmp_path):
    # The stand-in runs under this Python (its shebang says `python`, which not every host has).
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "nvidia-cuda-mps-control"
    wrapper.write_text('#!/bin/sh\nexec "%s" "%s" "$@"\n' % (sys.executable, CONTROL))
    wrapper.chmod(0o755)
    env = dict(os.environ)
    env["CUDA_MPS_PIPE_DIRECTORY"] = str(tmp_path / "pipe")
    env["CUDA_MPS_LOG_DIRECTORY"] = str(tmp_path / "log")
    env["PATH"] = str(bindir) + os.pathsep + env["PATH"]
    env["STANDIN_CONTROL"] = str(wrapper)
    env.pop("GPULAB_STANDIN_GPUS", None)
    yield env
    subprocess.run([str(wrapper)], input="quit\n", env=env, capture_output=True, text=True, check=False)
    pid_file = tmp_path / "pipe" / "nvidia-cuda-mps-control.pid"
    deadline = time.time() + 5
    while pid_file.exists() and time.time() < deadline:
        time.sleep(0.05)


def ctl(env, command):
    result = subprocess.run([env["STANDIN_CONTROL"]], input=command + "\n", env=env, capture_output=True, text=True,
                            check=False)
    return result.stdout, result.returncode


def test_replays_the_recorded_session(mps_env):
    for name in REPLAYED:
        command, expected, rc = read_transcript(name)
        result = subprocess.run(["bash", "-c", command], env=mps_env, capture_output=True, text=True, check=False)
        assert (name, result.stdout + result.stderr, result.returncode) == (name, expected, rc)


def test_pipe_directory_as_recorded_and_quit_leaves_sockets(mps_env):
    subprocess.run([mps_env["STANDIN_CONTROL"], "-d"], env=mps_env, check=True)
    pipe = mps_env["CUDA_MPS_PIPE_DIRECTORY"]
    modes = dict((n, os.lstat(os.path.join(pipe, n)).st_mode) for n in os.listdir(pipe))
    # 03_pipe_dir_listing: srw-rw-rw- control, -rw-rw-rw- control_lock, srwxr-xr-x control_privileged,
    # prwxrwxrwx log, -rw-rw-rw- nvidia-cuda-mps-control.pid
    assert dict((n, stat.filemode(m)) for n, m in modes.items()) == {
        "control": "srw-rw-rw-", "control_lock": "-rw-rw-rw-", "control_privileged": "srwxr-xr-x",
        "log": "prwxrwxrwx", "nvidia-cuda-mps-control.pid": "-rw-rw-rw-"}
    with open(os.path.join(pipe, "nvidia-cuda-mps-control.pid")) as handle:
        daemon_pid = int(handle.read())
    assert ctl(mps_env, "quit -t 2") == ("", 0)
    deadline = time.time() + 5
    while os.path.exists(os.path.join(pipe, "log")) and time.time() < deadline:
        time.sleep(0.05)
    # 31_after_quit: no daemon, the sockets and the lock stay behind.
    assert sorted(os.listdir(pipe)) == ["control", "control_lock", "control_privileged"]
    assert ctl(mps_env, "get_server_list") == ("Cannot find MPS control daemon process\n", 1)
    assert not os.path.exists("/proc/%d/cmdline" % daemon_pid) or open("/proc/%d/stat" % daemon_pid).read().split()[2] == "Z"
    with open(os.path.join(mps_env["CUDA_MPS_LOG_DIRECTORY"], "control.log")) as handle:
        log = handle.read()
    assert "] Starting control daemon using socket %s/control\n" % pipe in log
    assert "] Cmd:quit -t 2\n" in log and log.rstrip().endswith("Exit with status 0")


def test_killed_daemon_leaves_stale_files_and_starts_again(mps_env):
    subprocess.run([mps_env["STANDIN_CONTROL"], "-d"], env=mps_env, check=True)
    pipe = mps_env["CUDA_MPS_PIPE_DIRECTORY"]
    with open(os.path.join(pipe, "nvidia-cuda-mps-control.pid")) as handle:
        os.kill(int(handle.read()), 9)
    time.sleep(0.2)
    assert ctl(mps_env, "get_server_list") == ("Cannot find MPS control daemon process\n", 1)
    assert subprocess.run([mps_env["STANDIN_CONTROL"], "-d"], env=mps_env, check=False).returncode == 0
    assert ctl(mps_env, "get_default_active_thread_percentage") == ("100.0\n", 0)


def test_seed001_knob_answers_the_seeds_errors_where_driver_580_says_no_daemon(mps_env):
    """GPULAB_STANDIN_CLIENT_ERRORS=seed001: a socket with no daemon behind it is answered with the errors seed 001
    names (a guess, for the pod diagnoses of tests/cluster); without the knob, as recorded on driver 580."""
    subprocess.run([mps_env["STANDIN_CONTROL"], "-d"], env=mps_env, check=True)
    pipe = mps_env["CUDA_MPS_PIPE_DIRECTORY"]
    with open(os.path.join(pipe, "nvidia-cuda-mps-control.pid")) as handle:
        os.kill(int(handle.read()), 9)
    time.sleep(0.2)
    seed = dict(mps_env, GPULAB_STANDIN_CLIENT_ERRORS="seed001")

    def answer(env):
        result = subprocess.run([env["STANDIN_CONTROL"]], input="ps\n", env=env, capture_output=True, text=True,
                                check=False)
        return result.stdout, result.stderr, result.returncode
    # killed: its pid file stays
    assert answer(mps_env) == ("Cannot find MPS control daemon process\n", "", 1)
    assert answer(seed) == ("", "connect: Transport endpoint is not connected\n", 1)
    # the sockets a quit leaves (no pid file): refused
    os.unlink(os.path.join(pipe, "nvidia-cuda-mps-control.pid"))
    assert answer(seed) == ("", "connect: Connection refused\n", 1)
    assert answer(mps_env) == ("Cannot find MPS control daemon process\n", "", 1)
    # no socket at all: no daemon, whatever the knob says
    os.unlink(os.path.join(pipe, "control"))
    assert answer(seed) == ("Cannot find MPS control daemon process\n", "", 1)


def test_the_stand_in_cuda_client_becomes_a_client_of_the_daemon_it_reaches(mps_env):
    """standin_cuda_client.py (the cluster lane's workload in place of CUDA) asks `standin_attach_client self`: the
    daemon lists it under the PID its socket peer has, while it holds its "context"; gone when it exits."""
    subprocess.run([mps_env["STANDIN_CONTROL"], "-d"], env=mps_env, check=True)
    client = subprocess.Popen([sys.executable, os.path.join(HERE, "standin_cuda_client.py"), "--handshake"],
                              env=mps_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline() == "context: attached\n"
        assert client.stdout.readline() == "READY %d\n" % client.pid
        listed, _rc = ctl(mps_env, "ps")
        assert [line.split()[0] for line in listed.splitlines()[1:]] == [str(client.pid)]
        out, _err = client.communicate("go\n", timeout=30)
        assert out.splitlines()[-1].startswith("RESULT ") and '"check": "ok"' in out
    finally:
        client.kill()
    time.sleep(0.3)
    assert ctl(mps_env, "get_client_list %s" % ctl(mps_env, "get_server_list")[0].strip())[0] == ""


def test_the_stand_in_cuda_client_runs_without_mps_where_nothing_answers(tmp_path):
    env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=str(tmp_path / "nowhere"))
    done = subprocess.run([sys.executable, os.path.join(HERE, "standin_cuda_client.py"), "--iterations", "1"],
                          env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0 and done.stdout.startswith("context: no MPS (")


def test_hidden_client_hook_gives_recorded_table_shapes(mps_env):
    subprocess.run([mps_env["STANDIN_CONTROL"], "-d"], env=mps_env, check=True)
    ctl(mps_env, "set_default_active_thread_percentage 50")
    ctl(mps_env, "set_default_device_pinned_mem_limit 0 1536M")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        assert ctl(mps_env, "standin_attach_client %d" % sleeper.pid) == ("", 0)
        out, rc = ctl(mps_env, "get_server_list")
        server = int(out)
        assert rc == 0
        table = ctl(mps_env, "ps")[0]
        header, row = table.splitlines()
        # 22_ps_busy: same header, same column widths, the UUID cut to 22 characters.
        recorded = read_transcript("22_ps_busy")[1]
        assert header == recorded.splitlines()[0]
        assert row.startswith("%-10d%-10d%-15d%-26s" % (sleeper.pid, 1, server, "GPU-058fcf08-fc4a-49f5"))
        assert ctl(mps_env, "get_client_list %d" % server) == ("%d\n" % sleeper.pid, 0)
        assert ctl(mps_env, "get_server_status %d" % server) == ("ACTIVE\n", 0)
        assert ctl(mps_env, "get_device_client_list") == ("[0] 00:00.0, NVIDIA H100 80GB HBM3\n%d.1\n" % sleeper.pid, 0)
        assert ctl(mps_env, "get_active_thread_percentage %d" % server) == ("50.0\n", 0)
        with open(os.path.join(mps_env["CUDA_MPS_LOG_DIRECTORY"], "server.log")) as handle:
            log = handle.read()
        # 50_limits_experiment / 33_server_log: what the server took when it started.
        assert "Server   %d] Active Threads Percentage set to 50.0\n" % server in log
        assert "Server   %d] Device pinned memory limit for device 0 set to 0x60000000 bytes\n" % server in log
        # The client dies: it is gone from the daemon's view, the server stays.
        sleeper.kill()
        sleeper.wait()
        assert ctl(mps_env, "ps") == ("Server not found\n", 0)
        assert ctl(mps_env, "get_server_list") == ("%d\n" % server, 0)
    finally:
        sleeper.kill()


def test_new_defaults_bind_only_new_servers(mps_env):
    subprocess.run([mps_env["STANDIN_CONTROL"], "-d"], env=mps_env, check=True)
    assert ctl(mps_env, "start_server -uid %d" % os.getuid()) == ("", 0)
    server = int(ctl(mps_env, "get_server_list")[0])
    ctl(mps_env, "set_default_active_thread_percentage 25")
    assert ctl(mps_env, "get_active_thread_percentage %d" % server) == ("100.0\n", 0)
    assert ctl(mps_env, "shutdown_server %d" % server) == ("", 0)
    deadline = time.time() + 5
    while ctl(mps_env, "get_server_list")[0] and time.time() < deadline:
        time.sleep(0.05)
    assert ctl(mps_env, "get_server_list") == ("", 0)


@pytest.fixture
def nvml(monkeypatch):
    for knob in ("GPULAB_STANDIN_GPUS", "GPULAB_STANDIN_DRIVER", "GPULAB_STANDIN_NVML"):
        monkeypatch.delenv(knob, raising=False)
    monkeypatch.syspath_prepend(HERE)
    sys.modules.pop("pynvml", None)
    module = importlib.import_module("pynvml")
    assert module.__file__ == os.path.join(HERE, "pynvml.py")
    yield module
    sys.modules.pop("pynvml", None)


def test_pynvml_prints_the_recorded_line(nvml):
    """40_nvml.txt was printed by a short script; the same script over the stand-in prints the same."""
    with open(os.path.join(TRANSCRIPTS, "40_nvml.txt")) as handle:
        recorded = handle.read().splitlines()
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    mem = nvml.nvmlDeviceGetMemoryInfo(handle)
    lines = ["driver %s cuda %d" % (nvml.nvmlSystemGetDriverVersion(), nvml.nvmlSystemGetCudaDriverVersion()),
             "0 %s %s total %d free %d used %d cc %s mode %d mig %s" % (
                 nvml.nvmlDeviceGetName(handle), nvml.nvmlDeviceGetUUID(handle), mem.total, mem.free, mem.used,
                 nvml.nvmlDeviceGetCudaComputeCapability(handle), nvml.nvmlDeviceGetComputeMode(handle),
                 nvml.nvmlDeviceGetMigMode(handle))]
    assert lines == recorded[:2]
    assert "nvml version %s" % nvml.nvmlSystemGetNVMLVersion() in recorded
    nvml.nvmlShutdown()


@pytest.mark.parametrize("mode, error", [("library-not-found", "NVMLError_LibraryNotFound"),
                                         ("driver-not-loaded", "NVMLError_DriverNotLoaded")])
def test_pynvml_failures_raise_the_real_classes(nvml, monkeypatch, mode, error):
    monkeypatch.setenv("GPULAB_STANDIN_NVML", mode)
    with pytest.raises(nvml.NVMLError) as info:
        nvml.nvmlInit()
    assert type(info.value).__name__ == error
    assert isinstance(info.value, getattr(nvml, error))


def test_pynvml_fakes_more_gpus(nvml, monkeypatch):
    monkeypatch.setenv("GPULAB_STANDIN_GPUS", "4")
    nvml.nvmlInit()
    uuids = [nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(nvml.nvmlDeviceGetCount())]
    assert len(set(uuids)) == 4 and uuids[0] == "GPU-058fcf08-fc4a-49f5-ddd9-6d7fedc642b2"
    with pytest.raises(nvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetHandleByIndex(4)


def test_crash_knob_kills_the_daemon_after_start(mps_env):
    """Fault injection for the fleet scenario: -d succeeds, then the daemon dies, leaving its pid file."""
    env = dict(mps_env, GPULAB_STANDIN_MPS="crash-on-start")
    assert subprocess.run([env["STANDIN_CONTROL"], "-d"], env=env, check=False).returncode == 0
    time.sleep(1.0)
    assert ctl(mps_env, "get_server_list") == ("Cannot find MPS control daemon process\n", 1)
    assert os.path.exists(os.path.join(mps_env["CUDA_MPS_PIPE_DIRECTORY"], "nvidia-cuda-mps-control.pid"))


def test_foreground_mode_serves_and_logs_to_stdout(mps_env):
    """`-f` (what a Type=simple unit would run): the same daemon in the foreground, log lines on stdout."""
    daemon = subprocess.Popen([mps_env["STANDIN_CONTROL"], "-f"], env=mps_env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 10
        while ctl(mps_env, "get_server_list")[1] != 0 and time.time() < deadline:
            time.sleep(0.1)
        assert ctl(mps_env, "get_default_active_thread_percentage") == ("100.0\n", 0)
        assert ctl(mps_env, "quit") == ("", 0)
        out = daemon.communicate(timeout=10)[0]
    finally:
        daemon.kill()
    assert daemon.returncode == 0
    assert "] Starting control daemon using socket %s/control\n" % mps_env["CUDA_MPS_PIPE_DIRECTORY"] in out
    assert "] Cmd:get_default_active_thread_percentage\n" in out


def test_fault_hook_replays_the_h200_fault(mps_env):
    """standin_fault: what the H200 did (docs/evidence/2026-12-04-h200-fault.md), read by the collection's parser."""
    subprocess.run([mps_env["STANDIN_CONTROL"], "-d"], env=mps_env, check=True)
    first, second = subprocess.Popen(["sleep", "60"]), subprocess.Popen(["sleep", "60"])
    late = subprocess.Popen(["sleep", "60"])
    try:
        for proc in (first, second):
            assert ctl(mps_env, "standin_attach_client %d" % proc.pid) == ("", 0)
        server = int(ctl(mps_env, "get_server_list")[0])
        assert ctl(mps_env, "standin_fault %d" % second.pid) == ("", 0)
        assert ctl(mps_env, "get_server_status %d" % server) == ("FAULT\n", 0)
        assert "refused" in ctl(mps_env, "standin_attach_client %d" % late.pid)[0]
        with open(os.path.join(mps_env["CUDA_MPS_LOG_DIRECTORY"], "server.log")) as handle:
            log = handle.read()
        spec = importlib.util.spec_from_file_location(
            "_mps_output", os.path.join(ROOT, "plugins", "module_utils", "_mps_output.py"))
        parser = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(parser)
        (fault,) = parser.parse_server_log(log)[server]["faults"]
        assert fault["noticed_by"] == second.pid and fault["sticky_clients"] == sorted([first.pid, second.pid])
        assert fault["refused_clients"] == [late.pid] and fault["recovered"] is None
        for proc in (first, second):
            proc.kill()
            proc.wait()
        # Every client of the fault gone: ACTIVE again, the same server.
        assert ctl(mps_env, "get_server_status %d" % server) == ("ACTIVE\n", 0)
        assert ctl(mps_env, "standin_attach_client %d" % late.pid) == ("", 0)
        assert ctl(mps_env, "get_server_list") == ("%d\n" % server, 0)
        with open(os.path.join(mps_env["CUDA_MPS_LOG_DIRECTORY"], "server.log")) as handle:
            assert parser.parse_server_log(handle.read())[server]["faults"][0]["recovered"] is not None
    finally:
        for proc in (first, second, late):
            proc.kill()
        ctl(mps_env, "quit")
