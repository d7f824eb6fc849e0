# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""site.yml's host stages through ansible-playbook on this machine, against the NVIDIA STAND-INS of tests/standins
(the control daemon emulator and the NVML module that replay the recorded H100; no GPU, no systemd: the daemon is
managed directly, as on the GPU machine). What a user types: site.yml --check, then for real, then again."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
STANDINS = os.path.join(ROOT, "tests", "standins")
sys.path.insert(0, os.path.join(ROOT, "tests", "unit", "benchmarks"))
from fake_exec import executable  # noqa: E402

CONTROL = executable(os.path.join(STANDINS, "nvidia-cuda-mps-control"), "nvidia-cuda-mps-control-standin")


def site(lab, check=False, playbook=None, env=None, **extra):
    """site.yml --tags host (or another playbook, all of it) with the lab's variables."""
    binary = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable)) or shutil.which("ansible-playbook")
    argv = [binary, "-i", lab["inventory"]] + (playbook or [os.path.join(ROOT, "site.yml"), "--tags", "host"]) + [
        "-e", json.dumps(dict(lab["vars"], **extra))] + (["--check"] if check else [])
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               PYTHONPATH=STANDINS, ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", **(env or {}))
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


def recap(done):
    match = re.search(r"localhost\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", done.stdout)
    assert match, done.stdout[-3000:]
    return dict(zip(("ok", "changed", "unreachable", "failed"), (int(g) for g in match.groups())))


def answers(lab, command):
    env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=lab["pipe"], CUDA_MPS_LOG_DIRECTORY=lab["log"])
    return subprocess.run([CONTROL], input=command + "\n", text=True, capture_output=True, env=env, timeout=30,
                          check=False)


@pytest.fixture
def lab(tmp_path):
    pipe, log, state = str(tmp_path / "mps" / "pipe"), str(tmp_path / "mps" / "log"), str(tmp_path / "state")
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("gpu_hosts:\n  hosts:\n    localhost:\n")
    lab = {"pipe": pipe, "log": log, "inventory": str(inventory), "vars": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "preflight_control_binary": CONTROL, "mps_host_pipe_directory": pipe, "mps_host_log_directory": log,
        "mps_host_state_directory": state, "mps_host_service_manager": "direct",
        "mps_host_default_active_thread_percentage": 50, "mps_host_default_pinned_memory_limit": "1536M",
        # No GPU here: the dial-tone checks that the daemon answers, no CUDA client.
        "mps_dialtone_client_check": False, "gpulab_mps_qos_directory": str(tmp_path / "qos")}}
    yield lab
    answers(lab, "quit")  # whatever a failed test left running


def test_check_mode_on_a_fresh_host_predicts_and_changes_nothing(lab):
    """Regression: `site.yml --check` on a fresh host failed: mps_host predicted "would start", then the host
    dial-tone ran `ps` for real and found no daemon."""
    done = site(lab, check=True)
    assert done.returncode == 0, done.stdout[-4000:]
    assert recap(done)["changed"] >= 1  # the daemon would be started
    assert "MPS dial-tone skipped in check mode" in " ".join(done.stdout.split())
    assert not os.path.exists(lab["pipe"]) and not os.path.exists(lab["log"])


def test_the_host_stages_start_the_daemon_then_change_nothing(lab):
    first = site(lab)
    assert first.returncode == 0, first.stdout[-4000:]
    assert answers(lab, "get_default_active_thread_percentage").stdout == "50.0\n"
    assert answers(lab, "get_default_device_pinned_mem_limit 0").stdout == "1G\n"  # 1536M, rounded down
    second = site(lab)
    assert second.returncode == 0, second.stdout[-4000:]
    assert recap(second)["changed"] == 0, second.stdout[-4000:]
    check = site(lab, check=True)
    assert recap(check)["changed"] == 0 and "MPS answers in %s" % lab["pipe"] in " ".join(check.stdout.split())


def test_the_plugin_owner_stops_the_host_daemon_once(lab):
    """Regression: with owner plugin (and device_plugin_stop_host_daemon) every run started the host daemon,
    tested it and stopped it again: never idempotent. The plan keeps the host daemon stopped."""
    assert site(lab).returncode == 0
    first = site(lab, gpulab_mps_owner="plugin")
    assert first.returncode == 0, first.stdout[-4000:]
    assert recap(first)["changed"] >= 1
    assert "Cannot find MPS control daemon process" in answers(lab, "get_server_list").stdout
    second = site(lab, gpulab_mps_owner="plugin")
    assert second.returncode == 0, second.stdout[-4000:]
    assert recap(second)["changed"] == 0, second.stdout[-4000:]
    assert "the device plugin owns MPS" in " ".join(second.stdout.split())
    assert "Cannot find MPS control daemon process" in answers(lab, "get_server_list").stdout


def test_teardown_stops_the_daemon_then_changes_nothing(lab):
    """Regression (seen on the H200): teardown.yml ran mps_host without the plan it reads, and failed, leaving the
    lab's daemon running."""
    assert site(lab).returncode == 0
    teardown = [os.path.join(ROOT, "playbooks", "teardown.yml")]
    first = site(lab, playbook=teardown, gpulab_kubernetes=False)
    assert first.returncode == 0, first.stdout[-4000:]
    assert recap(first)["changed"] >= 1
    assert "Cannot find MPS control daemon process" in answers(lab, "get_server_list").stdout
    second = site(lab, playbook=teardown, gpulab_kubernetes=False)
    assert second.returncode == 0 and recap(second)["changed"] == 0, second.stdout[-4000:]


def test_the_qos_class_files_are_written_once_and_follow_the_plan(lab, tmp_path):
    """What a systemd service or a job script reads: one root-owned 0644 file per class, the class's variables and
    the host daemon's pipe directory; a class taken out of the plan loses its file, teardown removes them all, and a
    file the role did not write stays."""
    qos = tmp_path / "qos"
    first = site(lab)
    assert first.returncode == 0, first.stdout[-4000:]
    assert sorted(os.listdir(str(qos))) == ["batch.env", "latency.env"]
    info = os.stat(str(qos / "batch.env"))
    assert (info.st_mode & 0o777, info.st_uid) == (0o644, 0)
    lines = (qos / "batch.env").read_text().splitlines()
    assert [line for line in lines if not line.startswith("#")] == [
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=12", "CUDA_MPS_CLIENT_PRIORITY=1", "CUDA_MPS_PIPE_DIRECTORY=%s" % lab["pipe"]]
    # A job script gets exactly that environment from the file.
    env = subprocess.run(["sh", "-c", "set -a; . %s; set +a; env" % (qos / "batch.env")], capture_output=True,
                         text=True, env={"PATH": os.environ["PATH"]}, check=True).stdout.splitlines()
    assert sorted(v for v in env if v.startswith("CUDA_MPS_")) == [
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=12", "CUDA_MPS_CLIENT_PRIORITY=1", "CUDA_MPS_PIPE_DIRECTORY=%s" % lab["pipe"]]
    assert recap(site(lab))["changed"] == 0
    (qos / "mine.env").write_text("FOO=1\n")
    classes = {"latency": {"client_priority": 0}, "bulk": {"active_thread_percentage": 25, "pinned_memory_limit": "1G"}}
    check = site(lab, check=True, gpulab_mps_qos_classes=classes)
    assert check.returncode == 0 and recap(check)["changed"] >= 1
    assert sorted(os.listdir(str(qos))) == ["batch.env", "latency.env", "mine.env"]
    changed = site(lab, gpulab_mps_qos_classes=classes)
    assert changed.returncode == 0, changed.stdout[-4000:]
    assert sorted(os.listdir(str(qos))) == ["bulk.env", "latency.env", "mine.env"]
    assert "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=1G" in (qos / "bulk.env").read_text().splitlines()
    teardown = site(lab, playbook=[os.path.join(ROOT, "playbooks", "teardown.yml")], gpulab_mps_qos_classes=classes,
                    gpulab_kubernetes=False)
    assert teardown.returncode == 0, teardown.stdout[-4000:]
    assert os.listdir(str(qos)) == ["mine.env"]
    assert "Cannot find MPS control daemon process" in answers(lab, "get_server_list").stdout


def test_a_bad_qos_class_stops_the_host_before_anything_changes(lab, tmp_path):
    done = site(lab, gpulab_mps_qos_classes={"batch": {"active_thread_percentage": 60}})
    assert done.returncode != 0
    assert "qos_classes.batch.active_thread_percentage 60 is above the daemon's default_active_thread_percentage 50" \
        in " ".join(done.stdout.split())
    assert not os.path.exists(lab["pipe"]) and not (tmp_path / "qos").exists()


def test_a_class_above_the_running_daemons_default_is_refused(lab, tmp_path):
    """Read back where MPS allows it: the plan knew no daemon default, but the running daemon has 10 % (set by
    hand): the batch class's 12 % could not be had, and the role says so instead of writing the files."""
    assert site(lab).returncode == 0
    assert answers(lab, "set_default_active_thread_percentage 10").stdout.strip() == "10.0"
    # No device plugin planned: no replicas' share either, so the plan knows no daemon default.
    done = site(lab, mps_host_default_active_thread_percentage=None, gpulab_device_plugin=False)
    assert done.returncode != 0
    assert "QoS class(es) batch ask a larger share of the SMs than the running MPS daemon's default active thread " \
        "percentage, 10.0 (read back)" in " ".join(done.stdout.split())


FAKE_SYSTEMCTL = """#!/bin/sh
# A systemctl that records its calls and remembers what it was asked: enable, start, stop, disable.
here=$(dirname "$0")
echo "$*" >> "$here/calls"
case "$1" in
  show)
    active=inactive; enabled=disabled
    [ -e "$here/active" ] && active=active
    [ -e "$here/enabled" ] && enabled=enabled
    printf 'LoadState=loaded\\nActiveState=%s\\nSubState=dead\\nUnitFileState=%s\\nMainPID=0\\n' "$active" "$enabled"
    printf 'ExecMainStartTimestampMonotonic=0\\nNRestarts=0\\n';;
  start) touch "$here/active";;
  enable) touch "$here/enabled";;
esac
exit 0
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="writes root's files (in temporary directories): root only, as CI runs")
def test_under_systemd_the_host_gets_the_client_and_a_unit_that_calls_it(lab, tmp_path, monkeypatch):
    """The systemd path of mps_host (molecule runs it under a real systemd): the client and the plan file first
    (mps_client), then the unit rendered from the plan by mps_unit - the entry point for everything it asks of MPS,
    no shell line, no PIDFile= - then the same again changes nothing. systemctl is a recording fake; the daemon is
    started by mps_daemon (the fake starts nothing)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "systemctl").write_text(FAKE_SYSTEMCTL)
    (bindir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (bindir, os.environ["PATH"]))
    base = str(tmp_path)
    paths = {"mps_host_service_manager": "systemd", "mps_host_unit_directory": base + "/system",
             "mps_host_tmpfiles_directory": base + "/tmpfiles.d", "gpulab_mps_lib_directory": base + "/lib",
             "gpulab_mps_config_directory": base + "/etc"}
    first = site(lab, **paths)
    assert first.returncode == 0, first.stdout[-4000:]
    unit = (tmp_path / "system" / "nvidia-mps.service").read_text()
    python = json.loads((tmp_path / "etc" / "plan.json").read_text())["host"]["python"]
    client = "%s -I %s/lib/gpulab_mps.py --plan %s/etc/plan.json" % (python, base, base)
    assert "ExecStartPre=%s check-directories" % client in unit.splitlines()
    assert "ExecStop=%s --timeout 30 stop" % client in unit.splitlines()
    assert "/bin/sh" not in unit and "\nPIDFile=" not in unit
    dropin = (tmp_path / "system" / "nvidia-mps.service.d" / "gpulab-defaults.conf").read_text()
    assert "ExecStartPost=%s --timeout 30 apply-defaults" % client in dropin.splitlines()
    assert (tmp_path / "tmpfiles.d" / "gpulab-nvidia-mps.conf").read_text().splitlines()[1:] == [
        "d %s - - - -" % lab["pipe"], "d %s - - - -" % lab["log"]]
    assert json.loads((tmp_path / "etc" / "plan.json").read_text())["daemon"]["service_name"] == "nvidia-mps"
    calls = (bindir / "calls").read_text().splitlines()
    assert calls.index("daemon-reload") < calls.index("start nvidia-mps.service")
    # What the unit runs, run as it runs it: the directories are trusted, the defaults in force.
    for action in ("check-directories", "apply-defaults"):
        done = subprocess.run([python, "-I", base + "/lib/gpulab_mps.py", "--plan", base + "/etc/plan.json", action],
                              capture_output=True, text=True, cwd="/", timeout=60, check=False)
        assert done.returncode == 0, done.stderr
    second = site(lab, **paths)
    assert second.returncode == 0 and recap(second)["changed"] == 0, second.stdout[-4000:]


def test_make_lab_ends_with_the_seeds_table(lab, tmp_path):
    """`make lab`'s host and workload stages on this CPU: the stand-in daemon of tests/standins (its clients attached
    through its test hook by the simulated workers of tests/unit/roles/fakes/fake_gpu.py, as the CUDA driver would),
    a fake nvcc and a python3 with "PyTorch". The play ends with the seeds' table, readable as it is printed, each
    worker proven by the daemon's client lists, and writes it as markdown and JSON on the controller."""
    fakes = os.path.join(ROOT, "tests", "unit", "roles", "fakes")
    workload = {"cuda_workload_python": executable(os.path.join(fakes, "fake_gpu.py"), "python3"),
                "cuda_workload_nvcc": executable(os.path.join(fakes, "fake_nvcc.py"), "nvcc"),
                "cuda_workload_directory": str(tmp_path / "workloads"),
                "cuda_workload_results_directory": str(tmp_path / "results"),
                "cuda_workload_matmul_iterations": 3, "cuda_workload_kernel_pair_iterations": 3,
                "cuda_workload_timeout": 60}
    done = site(lab, playbook=[os.path.join(ROOT, "site.yml"), "--tags", "host,workload"],
                env={"FAKE_GPU_STANDIN": CONTROL}, **workload)
    assert done.returncode == 0, done.stdout[-5000:]
    # The last task of the play is the table, printed as a block (the YAML callback), one row a line.
    last = done.stdout[done.stdout.rindex("TASK ["):done.stdout.index("PLAY RECAP")]
    assert "What MPS bought on this host (the seeds' experiment)" in last and "msg: |-" in last
    rows = [line.strip() for line in last.splitlines() if line.strip().startswith("| ")]
    assert rows[0] == ("| workload | run | proven by get_client_list | seconds per worker | aggregate | "
                       "MPS / time-slicing |")
    assert [row.split(" | ")[1:3] for row in rows[1:]] == [
        ["1 alone, time-slicing", "not an MPS client"], ["1 alone, MPS", "an MPS client"],
        ["2 at once, time-slicing", "0 of 2 MPS clients"], ["2 at once, MPS", "2 of 2 MPS clients"]] * 2
    # What the daemon holds (site.yml's defaults here), read back through the client, under the table.
    assert "The daemon's defaults: 50 % of the SMs per client, pinned memory 1G on device 0." in last
    results = tmp_path / "results" / "localhost"
    report = json.loads((results / "seed_experiment.json").read_text())
    assert report["ok"] and report["daemon"]["pipe_directory"] == lab["pipe"]
    assert [len(report["runs"]), sorted(os.listdir(str(results)))] == [8, ["seed_experiment.json",
                                                                           "seed_experiment.md"]]
    # The MPS workers were clients of a server of the lab's daemon, which held them to its defaults.
    servers = [r["servers"] for r in report["runs"] if r["mode"] == "mps"]
    assert all(s and all(v["active_thread_percentage"] == 50.0 for v in s.values()) for s in servers)
