# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""mps_unit: the daemon's unit, defaults drop-in and tmpfiles.d entry rendered from the plan (every value checked for
its format), written only when they differ and only in trusted directories, systemd reloaded only then, the service
enabled and started only when it is not, and its state returned (main PID and its start, restarts). systemctl is the
fake CLI of conftest (exact argv, in order); the files are real, in a temporary directory. The molecule scenarios run
it against a real systemd."""

from __future__ import annotations

import copy
import os
import stat

import pytest

from ansible.module_utils import basic
from ansible_collections.gpulab.mps.plugins.module_utils import _plan
from ansible_collections.gpulab.mps.plugins.modules import mps_unit

SYSTEMCTL = "/bin/systemctl"
SHOW = [SYSTEMCTL, "show", "nvidia-mps.service", "--property=" + ",".join(mps_unit.PROPERTIES)]
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="another user's directory is made with os.chown")


def show(active="active", enabled="enabled", pid=0, restarts=0, load="loaded"):
    """What `systemctl show --property=...` prints (systemd 252, Debian 12)."""
    return ("LoadState=%s\nActiveState=%s\nSubState=%s\nUnitFileState=%s\nMainPID=%d\n"
            "ExecMainStartTimestampMonotonic=%d\nNRestarts=%d\n"
            % (load, active, "running" if active == "active" else "dead", enabled, pid, 3021554871 if pid else 0, restarts))


def make_plan(base):
    base = str(base)
    return {
        "version": _plan.PLAN_VERSION, "owner": "host", "control_binary": "/usr/local/nvidia/bin/nvidia-cuda-mps-control",
        "pipe_directory": "/run/nvidia-mps", "log_directory": "/var/log/nvidia-mps", "state_directory": base + "/state",
        "host": {"systemd": True, "python": "/usr/bin/python3"},
        "files": {"lib_directory": base + "/lib", "config_directory": base + "/etc", "plan_file": base + "/etc/plan.json",
                  "unit_directory": base + "/system", "tmpfiles_directory": base + "/tmpfiles.d"},
        "daemon": {"state": "started", "service_manager": "systemd", "service_name": "nvidia-mps",
                   "multiuser_server": False, "active_thread_percentage": 50.0,
                   "pinned_memory_limit": {"0": 1536 << 20}, "pinned_memory_limit_mps": {"0": "1536M"},
                   "environment": {"CUDA_MPS_PIPE_DIRECTORY": "/run/nvidia-mps",
                                   "CUDA_MPS_LOG_DIRECTORY": "/var/log/nvidia-mps"}}}


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A host with the collection's client installed (the entry point and the plan file), no unit yet."""
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path", lambda self, name, required=False: SYSTEMCTL)
    os.chmod(str(tmp_path), 0o755)
    plan = make_plan(tmp_path)
    for path in (plan["files"]["lib_directory"] + "/gpulab_mps.py", plan["files"]["plan_file"]):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write("# installed by gpulab.mps.mps_client\n")
    return {"base": tmp_path, "plan": plan, "unit": tmp_path / "system" / "nvidia-mps.service",
            "dropin": tmp_path / "system" / "nvidia-mps.service.d" / "gpulab-defaults.conf",
            "tmpfiles": tmp_path / "tmpfiles.d" / "gpulab-nvidia-mps.conf"}


def args(host, **extra):
    return dict({"plan": host["plan"]}, **extra)


def install(run_module, fake_cli, host):
    fake_cli.expect([SYSTEMCTL, "daemon-reload"])
    fake_cli.expect(SHOW, None, show(pid=os.getpid()))
    result, failed = run_module(mps_unit, args(host))
    assert not failed, result
    fake_cli.calls.clear()


def tree(path):
    found = {}
    for folder, dirs, files in os.walk(str(path)):
        for name in dirs + files:
            st = os.lstat(os.path.join(folder, name))
            found[os.path.join(folder, name)] = (st.st_uid, stat.S_IMODE(st.st_mode), st.st_size)
    return found


@pytest.mark.parametrize("check_mode", [False, True])
def test_fresh_host_gets_the_files_a_reload_and_a_started_service(run_module, fake_cli, host, check_mode):
    pid = os.getpid()  # a live process stands for the daemon: its start time is read from /proc
    if not check_mode:
        fake_cli.expect([SYSTEMCTL, "daemon-reload"])
    fake_cli.expect(SHOW, None, show("inactive", "disabled"))
    if not check_mode:
        fake_cli.expect([SYSTEMCTL, "enable", "nvidia-mps.service"])
        fake_cli.expect([SYSTEMCTL, "start", "nvidia-mps.service"])
        fake_cli.expect(SHOW, None, show(pid=pid))
    result, failed = run_module(mps_unit, args(host), check_mode=check_mode, diff=True)
    fake_cli.done()
    assert not failed and result["changed"]
    assert result["files_changed"] == [str(host["tmpfiles"]), str(host["unit"]), str(host["dropin"])]
    assert [d["after_header"] for d in result["diff"]] == result["files_changed"]
    assert (result["reloaded"], result["enabled"], result["started"]) == (True, True, True)
    if check_mode:
        assert not (host["base"] / "system").exists() and not (host["base"] / "tmpfiles.d").exists()
        assert result["identity"] is None
        return
    for key in ("unit", "dropin", "tmpfiles"):
        assert stat.S_IMODE(host[key].stat().st_mode) == 0o644 and host[key].stat().st_uid == os.geteuid()
    assert stat.S_IMODE(host["dropin"].parent.stat().st_mode) == 0o755
    assert result["status"]["MainPID"] == pid and result["status"]["NRestarts"] == 0
    assert result["identity"][0] == pid and result["identity"][1] > 0


def lines(path):
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


def test_the_unit_calls_the_one_entry_point_and_nothing_else(run_module, fake_cli, host):
    """Issue 20: the unit's shell lines (echo ... | binary, the trust check in sh) were extra doors to MPS; the unit's
    PIDFile= named the pid file MPS makes writable by every user."""
    install(run_module, fake_cli, host)
    lib, plan_file = host["plan"]["files"]["lib_directory"], host["plan"]["files"]["plan_file"]
    client = "/usr/bin/python3 -I %s/gpulab_mps.py --plan %s" % (lib, plan_file)
    unit = host["unit"].read_text()
    assert unit.startswith("# gpulab.mps: nvidia-mps.service")
    assert lines(host["unit"]) == [
        "[Unit]", "Description=NVIDIA MPS control daemon (/run/nvidia-mps)",
        "After=local-fs.target systemd-tmpfiles-setup.service", "Wants=local-fs.target",
        "[Service]", "Type=forking", "GuessMainPID=yes",
        "Environment=CUDA_MPS_LOG_DIRECTORY=/var/log/nvidia-mps", "Environment=CUDA_MPS_PIPE_DIRECTORY=/run/nvidia-mps",
        "ExecStartPre=systemd-tmpfiles --create %s" % host["tmpfiles"],
        "ExecStartPre=%s check-directories" % client,
        "ExecStart=/usr/local/nvidia/bin/nvidia-cuda-mps-control -d",
        "ExecStop=%s --timeout 30 stop" % client,
        "TimeoutStopSec=60", "Restart=on-failure", "RestartSec=2", "[Install]", "WantedBy=multi-user.target"]
    assert lines(host["dropin"]) == ["[Service]", "ExecStartPost=%s --timeout 30 apply-defaults" % client]
    # Regression: "d ... 0755 root root" made systemd-tmpfiles chown and chmod a pipe directory another user had made
    # first, at every start of the unit, so the unit's trust check passed on it. With "-" it is made when missing
    # and never adopted.
    assert lines(host["tmpfiles"]) == ["d /run/nvidia-mps - - - -", "d /var/log/nvidia-mps - - - -"]
    for path in ("unit", "dropin", "tmpfiles"):
        text = host[path].read_text()
        assert "/bin/sh" not in text and "PIDFile" not in text.replace("No PIDFile=", "") and "echo" not in text


def test_without_defaults_the_drop_in_applies_none_and_a_multiuser_daemon_gets_m(run_module, fake_cli, host):
    host["plan"]["daemon"].update(active_thread_percentage=None, pinned_memory_limit={}, pinned_memory_limit_mps={},
                                  multiuser_server=True)
    install(run_module, fake_cli, host)
    assert lines(host["dropin"]) == ["[Service]"]
    assert "ExecStart=/usr/local/nvidia/bin/nvidia-cuda-mps-control -d -M" in lines(host["unit"])


def test_service_in_place_is_read_once_and_not_changed(run_module, fake_cli, host):
    install(run_module, fake_cli, host)
    fake_cli.expect(SHOW, None, show(pid=os.getpid(), restarts=2))
    result, failed = run_module(mps_unit, args(host))
    fake_cli.done()
    assert not failed and not result["changed"]
    assert (result["files_changed"], result["reloaded"], result["enabled"], result["started"]) == ([], False, False, False)
    assert result["status"]["NRestarts"] == 2 and result["status"]["ActiveState"] == "active"


def test_changed_file_of_a_running_service_is_written_reloaded_and_not_restarted(run_module, fake_cli, host):
    install(run_module, fake_cli, host)
    dropin = host["dropin"].read_text()
    host["dropin"].write_text("[Service]\n")
    fake_cli.expect([SYSTEMCTL, "daemon-reload"])
    fake_cli.expect(SHOW, None, show(pid=os.getpid()))
    result, failed = run_module(mps_unit, args(host), diff=True)
    fake_cli.done()
    assert not failed and result["changed"] and not result["started"]
    assert result["files_changed"] == [str(host["dropin"])] and host["dropin"].read_text() == dropin
    assert result["diff"] == [{"before_header": str(host["dropin"]), "after_header": str(host["dropin"]),
                               "before": "[Service]\n", "after": dropin}]
    assert any("keeps its old settings until it restarts" in w for w in result["warnings"]), result["warnings"]


def test_file_with_the_right_content_but_another_mode_is_fixed(run_module, fake_cli, host):
    install(run_module, fake_cli, host)
    host["unit"].chmod(0o666)
    fake_cli.expect([SYSTEMCTL, "daemon-reload"])
    fake_cli.expect(SHOW, None, show(pid=os.getpid()))
    result, failed = run_module(mps_unit, args(host))
    assert not failed and result["files_changed"] == [str(host["unit"])]
    assert stat.S_IMODE(host["unit"].stat().st_mode) == 0o644


@pytest.mark.parametrize("check_mode", [False, True])
def test_masked_unit_is_refused_before_any_file_is_written(run_module, fake_cli, host, check_mode):
    (host["base"] / "system").mkdir()
    os.symlink("/dev/null", str(host["unit"]))
    result, failed = run_module(mps_unit, args(host), check_mode=check_mode)
    assert failed and "symbolic link" in result["msg"] and "unmask" in result["msg"]
    assert "nothing was changed" in result["msg"] and not host["tmpfiles"].exists()
    assert os.readlink(str(host["unit"])) == "/dev/null" and fake_cli.calls == []


def test_service_that_does_not_start_fails_with_systemds_message(run_module, fake_cli, host):
    install(run_module, fake_cli, host)
    err = "Job for nvidia-mps.service failed because the control process exited with error code.\n"
    fake_cli.expect(SHOW, None, show("failed"))
    fake_cli.expect([SYSTEMCTL, "start", "nvidia-mps.service"], None, "", 1, err)
    result, failed = run_module(mps_unit, args(host))
    fake_cli.done()
    assert failed and result["msg"] == "Unable to start service nvidia-mps: " + err.strip()
    assert result["rc"] == 1 and result["cmd"] == [SYSTEMCTL, "start", "nvidia-mps.service"]


def test_a_missing_entry_point_is_refused_before_anything_changes(run_module, fake_cli, host):
    os.unlink(host["plan"]["files"]["lib_directory"] + "/gpulab_mps.py")
    result, failed = run_module(mps_unit, args(host))
    assert failed and "gpulab_mps.py is missing: run the role gpulab.mps.mps_client first" in result["msg"]
    assert not (host["base"] / "system").exists() and fake_cli.calls == []


BAD = {
    "service name with a tmpfiles line": ("daemon", "service_name", "nvidia-mps\nd /tmp/pwned 0777 root root -", None),
    "service name with a carriage return": ("daemon", "service_name", "nvidia-mps\rd /tmp/pwned 0777 root root -", None),
    "service name with ../": ("daemon", "service_name", "../gpulab-escape", None),
    "pipe directory with a newline": (None, "pipe_directory", "/run/nvidia-mps\nExecStartPre=/bin/sh -c id", None),
    "environment value with a space": ("daemon", "environment", {"CUDA_MPS_PIPE_DIRECTORY": "/run/a b"}, "/run/a b"),
    "environment name of lower case": ("daemon", "environment", {"ld_preload": "/tmp/x.so"}, "ld_preload"),
    "binary with a specifier": (None, "control_binary", "/usr/bin/%h", None),
    "python with a prefix": ("host", "python", "-/usr/bin/python3", None),
    "lib directory with ..": ("files", "lib_directory", "/usr/local/lib/../../tmp", None),
}


@pytest.mark.parametrize("check_mode", [False, True])
@pytest.mark.parametrize("case", sorted(BAD))
def test_a_value_no_unit_can_carry_is_refused_before_anything_is_written(run_module, fake_cli, host, case,
                                                                         check_mode):
    """Issue 20: a newline in mps_host_service_name became a live tmpfiles.d line applied by root at boot."""
    section, key, value, shown = BAD[case]
    plan = copy.deepcopy(host["plan"])
    (plan[section] if section else plan)[key] = value
    before = tree(host["base"])
    result, failed = run_module(mps_unit, {"plan": plan}, check_mode=check_mode)
    assert failed and "nothing was changed" in result["msg"] and repr(shown or value) in result["msg"], result
    assert tree(host["base"]) == before and fake_cli.calls == []


@ROOT_ONLY
@pytest.mark.parametrize("check_mode", [False, True])
@pytest.mark.parametrize("planted", ["his-unit-directory", "link-to-roots-directory", "his-drop-in-directory",
                                     "his-tmpfiles-directory", "world-writable-unit-directory"])
def test_unit_files_are_not_written_where_another_user_planted(run_module, fake_cli, host, planted, check_mode):
    """The unit, drop-in and tmpfiles.d paths lie where he could act first (as tests/hostile plays it with a real
    user): nothing is written, nothing is chowned or chmodded, systemd is not asked anything."""
    base = host["base"]
    private = base / "private"
    private.mkdir(mode=0o700)
    files = host["plan"]["files"]
    if planted == "his-unit-directory":
        os.mkdir(files["unit_directory"], 0o755)
        os.chown(files["unit_directory"], 65534, 65534)
    elif planted == "link-to-roots-directory":
        os.symlink(str(private), files["unit_directory"])
    elif planted == "his-drop-in-directory":
        os.mkdir(files["unit_directory"], 0o755)
        os.mkdir(str(host["dropin"].parent), 0o755)
        os.chown(str(host["dropin"].parent), 65534, 65534)
    elif planted == "his-tmpfiles-directory":
        os.mkdir(files["tmpfiles_directory"], 0o755)
        os.chown(files["tmpfiles_directory"], 65534, 65534)
    else:
        os.mkdir(files["unit_directory"], 0o1777)
        os.chmod(files["unit_directory"], 0o1777)
    before = tree(base)
    result, failed = run_module(mps_unit, args(host), check_mode=check_mode)
    assert failed and "nothing was changed" in result["msg"], result
    assert any(path in result["msg"] for path in (files["unit_directory"], files["tmpfiles_directory"],
                                                  str(host["dropin"].parent)))
    assert tree(base) == before and fake_cli.calls == []


@pytest.mark.parametrize("check_mode", [False, True])
def test_absent_removes_only_the_collections_files_and_reloads(run_module, fake_cli, host, check_mode):
    install(run_module, fake_cli, host)
    other = host["dropin"].parent / "local.conf"
    other.write_text("[Service]\nNice=5\n")
    if not check_mode:
        fake_cli.expect([SYSTEMCTL, "daemon-reload"])
    result, failed = run_module(mps_unit, args(host, state="absent"), check_mode=check_mode)
    fake_cli.done()
    assert not failed and result["changed"]
    assert result["files_changed"] == [str(host["unit"]), str(host["dropin"]), str(host["tmpfiles"])]
    assert (host["unit"].exists(), host["dropin"].exists(), host["tmpfiles"].exists()) == (check_mode,) * 3
    assert other.exists()  # not the collection's: it stays, and so does its directory
    if not check_mode:
        again, failed = run_module(mps_unit, args(host, state="absent"))
        assert not failed and not again["changed"] and fake_cli.calls[-1]["argv"] == [SYSTEMCTL, "daemon-reload"]


def test_absent_leaves_a_unit_the_collection_did_not_write(run_module, fake_cli, host):
    (host["base"] / "system").mkdir()
    host["unit"].write_text("[Service]\nExecStart=/usr/bin/something-else\n")
    result, failed = run_module(mps_unit, args(host, state="absent"))
    assert not failed and not result["changed"] and host["unit"].exists()
    assert any("was not written by the collection" in w for w in result["warnings"]) and fake_cli.calls == []


def test_parse_show_reads_numbers_and_ignores_other_lines():
    assert mps_unit.parse_show(show(pid=761, restarts=1) + "Id=nvidia-mps.service\n") == {
        "LoadState": "loaded", "ActiveState": "active", "SubState": "running", "UnitFileState": "enabled",
        "MainPID": 761, "ExecMainStartTimestampMonotonic": 3021554871, "NRestarts": 1}
