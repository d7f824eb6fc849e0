# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""mps_unit: the unit files written only when they differ, systemd reloaded only then, the service enabled and
started only when it is not, and its state returned (main PID and its start, restarts). systemctl is the fake CLI
of conftest (exact argv, in order); the files are real, in a temporary directory. The molecule fleet and default
scenarios run it against a real systemd."""

from __future__ import annotations

import os
import stat

import pytest

from ansible.module_utils import basic
from ansible_collections.gpulab.mps.plugins.modules import mps_unit

SYSTEMCTL = "/bin/systemctl"
SHOW = [SYSTEMCTL, "show", "nvidia-mps.service", "--property=" + ",".join(mps_unit.PROPERTIES)]
UNIT = "[Unit]\nDescription=NVIDIA MPS control daemon (/run/nvidia-mps)\n\n[Service]\nType=forking\n"
DROPIN = "[Service]\nExecStartPost=/bin/sh -c 'echo set_default_active_thread_percentage 50 | nvidia-cuda-mps-control'\n"


def show(active="active", enabled="enabled", pid=0, restarts=0, load="loaded"):
    """What `systemctl show --property=...` prints (systemd 252, Debian 12)."""
    return ("LoadState=%s\nActiveState=%s\nSubState=%s\nUnitFileState=%s\nMainPID=%d\n"
            "ExecMainStartTimestampMonotonic=%d\nNRestarts=%d\n"
            % (load, active, "running" if active == "active" else "dead", enabled, pid, 3021554871 if pid else 0, restarts))


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path", lambda self, name, required=False: SYSTEMCTL)
    unit = tmp_path / "system" / "nvidia-mps.service"
    dropin = tmp_path / "system" / "nvidia-mps.service.d" / "gpulab-defaults.conf"
    return {"unit": unit, "dropin": dropin,
            "args": {"files": [{"path": str(unit), "content": UNIT}, {"path": str(dropin), "content": DROPIN}]}}


def install(files):
    for key, content in (("unit", UNIT), ("dropin", DROPIN)):
        files[key].parent.mkdir(parents=True, exist_ok=True)
        files[key].write_text(content)
        files[key].chmod(0o644)


@pytest.mark.parametrize("check_mode", [False, True])
def test_fresh_host_gets_the_files_a_reload_and_a_started_service(run_module, fake_cli, files, check_mode):
    pid = os.getpid()  # a live process stands for the daemon: its start time is read from /proc
    if not check_mode:
        fake_cli.expect([SYSTEMCTL, "daemon-reload"])
    fake_cli.expect(SHOW, None, show("inactive", "disabled"))
    if not check_mode:
        fake_cli.expect([SYSTEMCTL, "enable", "nvidia-mps.service"])
        fake_cli.expect([SYSTEMCTL, "start", "nvidia-mps.service"])
        fake_cli.expect(SHOW, None, show(pid=pid))
    result, failed = run_module(mps_unit, files["args"], check_mode=check_mode)
    fake_cli.done()
    assert not failed and result["changed"]
    assert result["files_changed"] == [str(files["unit"]), str(files["dropin"])]
    assert (result["reloaded"], result["enabled"], result["started"]) == (True, True, True)
    if check_mode:
        assert not files["unit"].exists() and not files["dropin"].exists()
        assert result["identity"] is None
    else:
        assert files["unit"].read_text() == UNIT and files["dropin"].read_text() == DROPIN
        assert stat.S_IMODE(files["dropin"].stat().st_mode) == 0o644
        assert stat.S_IMODE(files["dropin"].parent.stat().st_mode) == 0o755
        assert result["status"]["MainPID"] == pid and result["status"]["NRestarts"] == 0
        assert result["identity"][0] == pid and result["identity"][1] > 0


def test_service_in_place_is_read_once_and_not_changed(run_module, fake_cli, files):
    install(files)
    fake_cli.expect(SHOW, None, show(pid=os.getpid(), restarts=2))
    result, failed = run_module(mps_unit, files["args"])
    fake_cli.done()
    assert not failed and not result["changed"]
    assert (result["files_changed"], result["reloaded"], result["enabled"], result["started"]) == ([], False, False, False)
    assert result["status"]["NRestarts"] == 2 and result["status"]["ActiveState"] == "active"


def test_changed_file_of_a_running_service_is_written_reloaded_and_not_restarted(run_module, fake_cli, files):
    install(files)
    files["dropin"].write_text("[Service]\n")
    fake_cli.expect([SYSTEMCTL, "daemon-reload"])
    fake_cli.expect(SHOW, None, show(pid=os.getpid()))
    result, failed = run_module(mps_unit, files["args"], diff=True)
    fake_cli.done()
    assert not failed and result["changed"] and not result["started"]
    assert result["files_changed"] == [str(files["dropin"])] and files["dropin"].read_text() == DROPIN
    assert result["diff"] == [{"before_header": str(files["dropin"]), "after_header": str(files["dropin"]),
                               "before": "[Service]\n", "after": DROPIN}]
    assert any("keeps its old settings until it restarts" in w for w in result["warnings"]), result["warnings"]


def test_file_with_the_right_content_but_another_mode_is_fixed(run_module, fake_cli, files):
    install(files)
    files["unit"].chmod(0o666)
    fake_cli.expect([SYSTEMCTL, "daemon-reload"])
    fake_cli.expect(SHOW, None, show(pid=os.getpid()))
    result, failed = run_module(mps_unit, files["args"])
    assert not failed and result["files_changed"] == [str(files["unit"])]
    assert stat.S_IMODE(files["unit"].stat().st_mode) == 0o644


def test_masked_unit_is_refused_and_left_alone(run_module, fake_cli, files):
    files["unit"].parent.mkdir(parents=True)
    os.symlink("/dev/null", str(files["unit"]))
    result, failed = run_module(mps_unit, files["args"])
    assert failed and "symbolic link" in result["msg"] and "unmask" in result["msg"]
    assert os.readlink(str(files["unit"])) == "/dev/null" and fake_cli.calls == []


def test_service_that_does_not_start_fails_with_systemds_message(run_module, fake_cli, files):
    install(files)
    err = "Job for nvidia-mps.service failed because the control process exited with error code.\n"
    fake_cli.expect(SHOW, None, show("failed"))
    fake_cli.expect([SYSTEMCTL, "start", "nvidia-mps.service"], None, "", 1, err)
    result, failed = run_module(mps_unit, files["args"])
    fake_cli.done()
    assert failed and result["msg"] == "Unable to start service nvidia-mps: " + err.strip()
    assert result["rc"] == 1 and result["cmd"] == [SYSTEMCTL, "start", "nvidia-mps.service"]


def test_parse_show_reads_numbers_and_ignores_other_lines():
    assert mps_unit.parse_show(show(pid=761, restarts=1) + "Id=nvidia-mps.service\n") == {
        "LoadState": "loaded", "ActiveState": "active", "SubState": "running", "UnitFileState": "enabled",
        "MainPID": 761, "ExecMainStartTimestampMonotonic": 3021554871, "NRestarts": 1}
