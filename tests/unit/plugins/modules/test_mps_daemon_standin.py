# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""mps_daemon run as Ansible runs it (the module file, its arguments in a file) against the STAND-IN control daemon
of tests/standins (it replays the recorded H100 CLI; no GPU): the real run_command, real processes, real files.
The faults of a daemon's life: a stop that must wait, a daemon killed under the module, two runs at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from module_file import CONTROL, control, launch, result_of  # noqa: E402


def module(tmp_path, check=False, **args):
    return result_of(launch("mps_daemon", args, check, str(tmp_path / "args")))


def ctl(lab, command):
    return control(lab["pipe_directory"], lab["log_directory"], command)


@pytest.fixture
def lab(tmp_path):
    lab = {"pipe_directory": str(tmp_path / "pipe"), "log_directory": str(tmp_path / "log"),
           "state_directory": str(tmp_path / "state"), "control_binary": CONTROL}
    yield lab
    ctl(lab, "quit -t 0")


@pytest.fixture
def holder():
    """A live process that the stand-in daemon will count as a CUDA client (its hidden test hook)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_forced_stop_waits_for_quit_t_to_return(tmp_path, lab, holder):
    """Regression (seen on the H200): `quit -t N` returns only after N seconds, and the module bounded that call by
    N itself, so every forced stop under a live client was killed as 'the control binary hangs'."""
    assert module(tmp_path, **lab)["changed"]
    ctl(lab, "standin_attach_client %d" % holder.pid)
    refused = module(tmp_path, state="stopped", **lab)
    assert refused["failed"] and "Refusing to stop" in refused["msg"] and str(holder.pid) in refused["msg"]
    started = time.time()
    stopped = module(tmp_path, state="stopped", force=True, timeout=2, **lab)
    assert not stopped.get("failed"), stopped.get("msg")
    assert stopped["changed"] and not stopped["daemon"]["running"]
    assert time.time() - started >= 2  # it waited for quit -t 2 instead of killing it
    assert holder.poll() is None  # the stand-in forced its server down, not the process itself


def test_a_daemon_killed_before_the_stop_counts_as_stopped(tmp_path, lab):
    """Regression: a daemon killed just before `quit` made the stop fail, and a second stop said ok but left the
    dead daemon's pid file, fifo and sockets behind."""
    module(tmp_path, **lab)
    pid = int(open(os.path.join(lab["pipe_directory"], "nvidia-cuda-mps-control.pid")).read())
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)
    assert sorted(os.listdir(lab["pipe_directory"])) == [
        "control", "control_lock", "control_privileged", "log", "nvidia-cuda-mps-control.pid"]
    check = module(tmp_path, check=True, state="stopped", **lab)
    assert check["changed"] and len(os.listdir(lab["pipe_directory"])) == 5  # check mode removed nothing
    first = module(tmp_path, state="stopped", **lab)
    assert not first.get("failed"), first.get("msg")
    assert first["changed"] and sorted(first["stale_sockets_removed"]) == [
        "control", "control_lock", "control_privileged", "log", "nvidia-cuda-mps-control.pid"]
    assert os.listdir(lab["pipe_directory"]) == []
    second = module(tmp_path, state="stopped", **lab)
    assert not second["changed"] and not second.get("failed")


def test_a_planted_pid_does_not_stop_the_stop(tmp_path, lab, holder):
    """Regression: MPS makes its pid file writable by everyone; a planted pid made root's stop wait for that
    process, fail, and leave the daemon's sockets behind. A pid is acted on only when it is this daemon."""
    module(tmp_path, **lab)
    with open(os.path.join(lab["pipe_directory"], "nvidia-cuda-mps-control.pid"), "w") as handle:
        handle.write(str(holder.pid))  # a live process, but not the daemon
    stopped = module(tmp_path, state="stopped", timeout=3, **lab)
    assert not stopped.get("failed"), stopped.get("msg")
    assert "Cannot find MPS control daemon process" in ctl(lab, "get_server_list")
    assert holder.poll() is None  # never signalled
    assert os.listdir(lab["pipe_directory"]) == []


def test_two_runs_at_once_each_report_what_they_set(tmp_path, lab):
    """Regression: two runs at once on one pipe directory: the losers failed with a misleading message, and a run
    that asked for 30 % reported success while 70 % was in force. Runs are serialised by a lock."""
    module(tmp_path, **lab)
    runs = [(value, launch("mps_daemon", dict(lab, default_active_thread_percentage=value), folder=str(tmp_path / "args")))
            for value in (30, 70, 30, 70)]
    results = [(value, result_of(proc)) for value, proc in runs]
    for value, result in results:
        assert not result.get("failed"), result.get("msg")
        assert result["defaults"]["active_thread_percentage"] == float(value)
    in_force = float(ctl(lab, "get_default_active_thread_percentage").strip())
    assert in_force in (30.0, 70.0)


def test_every_refusal_comes_before_any_change(tmp_path, lab):
    cases = [({"default_active_thread_percentage": True}, "got True"),
             ({"default_pinned_memory_limit": "99999G"}, "is more than the 81559 MiB it has"),
             ({"default_pinned_memory_limit": "999999999999T"}, "it has"),
             ({"timeout": 99999}, "timeout must be a whole number of seconds from 1 to 3600"),
             ({"visible_devices": ["0", "GPU-058fcf08-fc4a-49f5-ddd9-6d7fedc642b2"]}, "names GPU 0 twice"),
             ({"pipe_directory": "relative/pipe"}, "must be an absolute path"),
             ({"pipe_directory": str(tmp_path / "with space")}, "holds characters that a systemd unit"),
             ({"log_directory": str(tmp_path / "log;rm")}, "holds characters that a systemd unit"),
             ({"directory_mode": "0777"}, "lets group or others write"),
             ({"directory_mode": 755}, "lets group or others write")]  # YAML's 755 is 0o1363
    for check in (True, False):
        for extra, message in cases:
            result = module(tmp_path, check=check, **dict(lab, **extra))
            assert result.get("failed") and message in result["msg"], (extra, result.get("msg"))
    assert os.listdir(str(tmp_path)) == ["args"]  # nothing made: no pipe, log or state directory


def test_an_unquoted_yaml_mode_is_the_mode(tmp_path, lab):
    """Regression: `directory_mode: 0711` unquoted in YAML reached the module as the integer 457 and became a
    world-writable mode without the sticky bit. It is the mode 0711, as ansible.builtin.file reads it."""
    result = module(tmp_path, directory_mode=0o711, **lab)
    assert not result.get("failed"), result.get("msg")
    assert oct(os.stat(lab["pipe_directory"]).st_mode & 0o7777) == "0o711"
