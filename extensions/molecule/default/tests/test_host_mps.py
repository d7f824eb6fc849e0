# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an administrator checks on a GPU host after the host roles ran.

The host is a systemd container with the NVIDIA STAND-INS of tests/standins/ (no GPU here): the
MPS control CLI they drive replays what the real one said on an H100. The real binaries are
covered by the GPU lane (tests/gpu/).
"""

from __future__ import annotations

import os
import time

import testinfra.utils.ansible_runner

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts("all")

PIPE = "/run/nvidia-mps"
LOGS = "/var/log/nvidia-mps"
CONTROL = "/usr/local/nvidia/bin/nvidia-cuda-mps-control"
UNIT = "nvidia-mps.service"


def ctl(host, command):
    """`echo command | nvidia-cuda-mps-control` as a user would type it, with the unit's pipe directory."""
    return host.run("echo %s | CUDA_MPS_PIPE_DIRECTORY=%s CUDA_MPS_LOG_DIRECTORY=%s %s", command, PIPE, LOGS, CONTROL)


def unit_property(host, name):
    return host.check_output("systemctl show %s --property %s --value", UNIT, name)


def test_the_stand_ins_are_what_runs_here(host):
    # Guard: this scenario must never be mistaken for a run on real NVIDIA software.
    assert host.file("/etc/gpulab-standin/README").contains("STAND-INS")


def test_mps_service_is_active_and_enabled(host):
    service = host.service(UNIT)
    assert service.is_running
    assert service.is_enabled


def test_unit_restarts_the_daemon_on_failure(host):
    assert unit_property(host, "Restart") == "on-failure"
    unit_text = host.check_output("systemctl cat %s", UNIT)
    assert "CUDA_MPS_PIPE_DIRECTORY=%s" % PIPE in unit_text


LIB = "/usr/local/lib/gpulab-mps"
PLAN = "/etc/gpulab-mps/plan.json"


def test_the_unit_asks_mps_only_through_the_collections_entry_point(host):
    """Issue 20: the unit's shell lines (echo ... | binary, a trust check in sh) were extra doors to MPS, and its
    PIDFile= was the file MPS makes writable by every user."""
    text = host.check_output("systemctl cat %s", UNIT)
    assert "/bin/sh" not in text and "echo" not in text
    assert not [line for line in text.splitlines() if line.startswith("PIDFile=")]
    client = "/usr/bin/python3 -I %s/gpulab_mps.py --plan %s" % (LIB, PLAN)
    assert "ExecStartPre=%s check-directories" % client in text
    assert "ExecStartPost=%s --timeout 30 apply-defaults" % client in text
    assert "ExecStop=%s --timeout 30 stop" % client in text
    assert unit_property(host, "Type") == "forking" and unit_property(host, "GuessMainPID") == "yes"


def test_the_client_and_the_plan_are_roots_and_the_entry_point_answers(host):
    for path, mode in ((LIB, 0o755), (LIB + "/gpulab_mps.py", 0o644), (PLAN, 0o644), ("/etc/gpulab-mps", 0o755)):
        entry = host.file(path)
        assert entry.user == "root" and entry.mode == mode and not entry.is_symlink, path
    status = host.run("/usr/bin/python3 -I %s/gpulab_mps.py --plan %s status", LIB, PLAN)
    assert status.rc == 0 and "gpulab.mps:" in status.stdout, status.stdout + status.stderr
    # The client's files are what the collection wrote: no bytecode of root's beside them (the collector's venv, which
    # mps_metrics puts in the same directory, has its own).
    assert not host.run("find %s -path %s/venv -prune -o -name __pycache__ -print", LIB, LIB).stdout.strip()


def test_pipe_and_log_directories(host):
    pipe = host.file(PIPE)
    assert pipe.is_directory and pipe.user == "root"
    assert pipe.mode & 0o002 == 0, "the pipe directory must not be world-writable"
    assert pipe.mode & 0o001, "clients of every user must reach the control socket"
    assert host.file(PIPE + "/control").is_socket
    assert host.file(PIPE + "/nvidia-cuda-mps-control.pid").exists
    logs = host.file(LOGS)
    assert logs.is_directory and logs.mode & 0o002 == 0
    assert host.file(LOGS + "/control.log").contains("Starting control daemon using socket %s/control" % PIPE)


def test_daemon_answers_and_has_no_server_yet(host):
    result = ctl(host, "ps")
    assert (result.rc, result.stdout) == (0, "Server not found\n")


def test_defaults_read_back_through_the_cli(host):
    # Set by the inventory: 50 % and 1536M; the CLI reads sizes back in whole G rounded down.
    assert ctl(host, "get_default_active_thread_percentage").stdout == "50.0\n"
    assert ctl(host, "get_default_device_pinned_mem_limit 0").stdout == "1G\n"


def test_systemd_brings_a_killed_daemon_back(host):
    before = int(unit_property(host, "MainPID"))
    restarts = int(unit_property(host, "NRestarts"))
    assert before > 0
    host.run("kill -9 %s", str(before))
    deadline = time.time() + 30
    while time.time() < deadline:
        pid = int(unit_property(host, "MainPID"))
        if pid not in (0, before) and ctl(host, "get_server_list").rc == 0:
            break
        time.sleep(0.5)
    assert int(unit_property(host, "MainPID")) not in (0, before)
    assert int(unit_property(host, "NRestarts")) == restarts + 1
    assert ctl(host, "get_server_list").rc == 0
    # The defaults live in the daemon's memory: the restarted daemon must have them again.
    assert ctl(host, "get_default_active_thread_percentage").stdout == "50.0\n"
    assert ctl(host, "get_default_device_pinned_mem_limit 0").stdout == "1G\n"


def test_a_daemon_restarted_by_systemd_with_the_unit_limits_is_not_changed(host):
    """After systemd restarted the daemon (the test above), the unit's drop-in set 1536M again (read back as 1G):
    mps_daemon, asked the same with defaults_applied_at_start as mps_host asks it, must report no change. It reported
    changed before the record held for the unit's restarts (keyed by the pid, which a restart changes)."""
    result = host.ansible("gpulab.mps.mps_daemon",
                          "pipe_directory=%s log_directory=%s default_active_thread_percentage=50 "
                          "default_pinned_memory_limit=1536M defaults_applied_at_start=true" % (PIPE, LOGS),
                          check=True)
    assert result.get("failed") is not True, result
    assert result["changed"] is False, result
    assert result["defaults"]["pinned_memory_limit"] == {"0": "1536M"}


def test_stopping_goes_through_systemd(host, tmp_path):
    """Regression: stopped.yml quit the daemon behind systemd's back, then ran `systemctl stop` on a unit whose
    process was already gone. The role stops it through systemd: the unit's ExecStop (quit -t 30) is what quits."""
    import json
    import subprocess
    playbook = tmp_path / "stop.yml"
    playbook.write_text(json.dumps([{"hosts": "gpu_hosts", "gather_facts": False, "vars": {"mps_host_state": "stopped"},
                                     "roles": ["gpulab.mps.preflight", "gpulab.mps.mps_host"]}]))
    project = os.environ["MOLECULE_PROJECT_DIRECTORY"]
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(project, ".collections"), ANSIBLE_PIPELINING="True")
    done = subprocess.run(["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(playbook)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:]
    assert unit_property(host, "ActiveState") == "inactive"
    quits = [line for line in host.file(LOGS + "/control.log").content_string.splitlines() if "Cmd:quit" in line]
    assert quits and quits[-1].endswith("Cmd:quit -t 30"), quits
    assert ctl(host, "get_server_list").rc == 1


PROM = "/var/lib/prometheus/node-exporter/gpulab_mps.prom"


def start_daemon(host):
    host.check_output("systemctl start nvidia-mps.service")
    for _attempt in range(50):
        if ctl(host, "get_server_list").rc == 0:
            return
        time.sleep(0.2)
    raise AssertionError("the nvidia-mps daemon did not answer within 10 s of its start")


def prom_value(text, series):
    """The value of one series line of the textfile, or None."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def test_metrics_timer_runs_the_collector(host):
    """Role mps_metrics under systemd: the timer is enabled and active, and its oneshot service has run."""
    timer = host.service("gpulab-mps-metrics.timer")
    assert timer.is_enabled and timer.is_running
    assert host.check_output("systemctl show gpulab-mps-metrics.service --property Result --value") == "success"


def test_metrics_textfile_says_what_runs_here(host):
    """What node_exporter would serve: the daemon of the unit, healthy, its defaults as planned; the file root's."""
    # The daemon of the unit again (the test before stops it), then a fresh reading (the timer reads every 15 s).
    start_daemon(host)
    host.check_output("systemctl start gpulab-mps-metrics.service")
    prom = host.file(PROM)
    assert prom.is_file and prom.user == "root" and prom.mode == 0o644
    textfile = host.file(os.path.dirname(PROM))
    assert textfile.is_directory and not textfile.is_symlink and textfile.user == "root" and textfile.mode == 0o755
    text = prom.content_string
    assert prom_value(text, "gpulab_mps_control_daemon_up") == 1
    assert prom_value(text, "gpulab_mps_healthy") == 1
    assert prom_value(text, 'gpulab_mps_daemon_state{state="running"}') == 1
    assert prom_value(text, "gpulab_mps_default_active_thread_percentage") == 50
    assert prom_value(text, "gpulab_mps_limits_as_planned") == 1
    # No NVML in a container (the venv's nvidia-ml-py finds no driver): said, not hidden.
    assert prom_value(text, 'gpulab_mps_collector_error{source="nvml"}') == 1


def test_metrics_follow_a_stopped_daemon(host):
    """After the daemon stops, the next reading says so (the service run by hand, as its timer would)."""
    try:
        host.check_output("systemctl stop nvidia-mps.service")
        host.check_output("systemctl start gpulab-mps-metrics.service")
        text = host.file(PROM).content_string
        assert prom_value(text, "gpulab_mps_control_daemon_up") == 0
        assert prom_value(text, 'gpulab_mps_problems{kind="daemon_not_running"}') == 1
    finally:
        start_daemon(host)
