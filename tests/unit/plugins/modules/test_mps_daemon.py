# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""mps_daemon: its decisions, and main() over the CLI's recorded answers (exact argv and stdin asserted).

The daemon's process and files are real where the module checks them (a live process named like the daemon, with its
pipe directory in its environment, a real control socket): the CLI's answers are the recorded ones."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ansible_collections.gpulab.mps.plugins.module_utils import _plan
from ansible_collections.gpulab.mps.plugins.module_utils._mps_control import StateRecord
from ansible_collections.gpulab.mps.plugins.module_utils._mps_output import PID_FILE
from ansible_collections.gpulab.mps.plugins.module_utils import _mps_daemon
from ansible_collections.gpulab.mps.plugins.module_utils._command import SAFE_PATH
from ansible_collections.gpulab.mps.plugins.modules import mps_daemon
from conftest import make_socket, transcript_output

G, M = 1 << 30, 1 << 20
NO_DAEMON = transcript_output("00_control_no_daemon.txt")
NO_SERVER = transcript_output("05_ps_empty.txt")
PS_BUSY = transcript_output("22_ps_busy.txt")


@pytest.fixture
def host(tmp_path, daemon_process):
    """A control binary path, a pipe and a log directory (not created), a state directory, the module's common
    args, and running(): a live daemon process for the pipe directory."""
    binary = tmp_path / "nvidia-cuda-mps-control"
    binary.write_text("#!/bin/sh\nexit 99\n")  # never run: run_command is faked
    binary.chmod(0o755)
    pipe, log, state = tmp_path / "mps" / "pipe", tmp_path / "mps" / "log", tmp_path / "state"
    args = {"control_binary": str(binary), "pipe_directory": str(pipe), "log_directory": str(log),
            "state_directory": str(state)}
    return {"ctl": [str(binary)], "pipe": pipe, "log": log, "state": state, "args": args,
            "running": lambda: daemon_process(pipe)}


def expect_idle_snapshot(cli, ctl, atp="50.0", pinned="2G", devices=(0,)):
    cli.expect(ctl, "get_server_list", "")
    cli.expect(ctl, "ps", *NO_SERVER)
    cli.expect(ctl, "get_default_active_thread_percentage", atp + "\n")
    for device in devices:
        cli.expect(ctl, "get_default_device_pinned_mem_limit %d" % device, (pinned + "\n") if pinned else "")


def expect_busy_snapshot(cli, ctl, atp="50.0", server_atp="50.0", pinned="2G"):
    """Daemon with server 486 and its client 497 (transcripts 21-26)."""
    cli.expect(ctl, "get_server_list", *transcript_output("21_server_list_busy.txt"))
    cli.expect(ctl, "get_server_status 486", *transcript_output("24_server_status.txt"))
    cli.expect(ctl, "get_client_list 486", *transcript_output("23_client_list.txt"))
    cli.expect(ctl, "get_active_thread_percentage 486", server_atp + "\n")
    cli.expect(ctl, "get_device_pinned_mem_limit 486 0", pinned + "\n")
    cli.expect(ctl, "ps", *PS_BUSY)
    cli.expect(ctl, "get_default_active_thread_percentage", atp + "\n")
    cli.expect(ctl, "get_default_device_pinned_mem_limit 0", pinned + "\n")


# --- decisions --------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, ok", [(None, True), (1, True), (12.5, True), (100, True), (0, False), (150, False),
                                       (-3, False), (100.5, False)])
def test_validate_percentage(value, ok):
    assert (_plan.percentage(value)[1] is None) == ok


def test_a_boolean_is_not_a_percentage():
    """YAML `true` would be float 1.0 through the float type: it is refused (it was taken as 1 %)."""
    assert "got True" in _plan.percentage(True)[1]


def test_pinned_request():
    assert _plan.pinned_request("2G") == ({"*": 2 * G}, [])
    assert _plan.pinned_request({"0": "1536M", "GPU-058f": "4G"}) == ({"0": 1536 * M, "GPU-058f": 4 * G}, [])
    request, errors = _plan.pinned_request({"0": "lots", "1": "1.5K"})
    assert request == {}
    assert errors[0].startswith("default_pinned_memory_limit for device 0: 'lots' is not a memory size")
    assert "whole number of MiB" in errors[1]


GPUS = [{"index": 0, "uuid": "GPU-aaaa"}, {"index": 1, "uuid": "GPU-bbbb"}, {"index": 2, "uuid": "GPU-cccc"}]


def plan_devices(gpus, visible, pinned):
    daemon, errors = _plan.daemon_plan(gpus, visible, None, pinned)
    return daemon["visible_devices"], dict((int(o), b) for o, b in daemon["pinned_memory_limit"].items()), \
        daemon["devices"], errors


def test_plan_devices_without_visible_devices_uses_nvml_indexes():
    visible, limits, uuids, errors = plan_devices(GPUS, None, {"*": "2G", "GPU-cccc": "4G"})
    assert (visible, limits, errors) == (None, {0: 2 * G, 1: 2 * G, 2: 4 * G}, [])
    assert uuids == {"0": "GPU-aaaa", "1": "GPU-bbbb", "2": "GPU-cccc"}


def test_plan_devices_with_visible_devices_renumbers_as_the_daemon_does():
    visible, limits, uuids, errors = plan_devices(GPUS, ["2", "GPU-aaaa"], {"2": "4G", "*": "1G"})
    assert visible == ["GPU-cccc", "GPU-aaaa"]
    # The daemon sees GPU 2 as device 0 and GPU 0 as device 1.
    assert limits == {0: 4 * G, 1: G}
    assert uuids == {"0": "GPU-cccc", "1": "GPU-aaaa"}
    assert errors == []


def test_plan_devices_refuses_devices_outside_visible_devices():
    errors = plan_devices(GPUS, ["0"], {"1": "1G"})[3]
    assert errors == ["default_pinned_memory_limit: device 1 (GPU 1) is not in visible_devices"]


@pytest.mark.parametrize("size, shown, in_sync", [
    (2 * G, "2G", True), (512 * M, "512M", True), (1536 * M, "1536M", True),
    # A rounded read-back cannot prove 1536M (the snapshot replaces it when this module recorded it).
    (1536 * M, "1G", False), (2 * G, None, False), (2 * G, "4G", False),
])
def test_pinned_in_sync(size, shown, in_sync):
    assert _mps_daemon.pinned_in_sync(size, shown) == in_sync


def test_server_matches_prefers_the_exact_logged_value():
    server = {"active_thread_percentage": 50.0, "pinned_memory_limit": {"0": "1G"},
              "logged": {"active_thread_percentage": 50.0, "pinned_memory_limit": {"0": 1536 * M}}}
    assert _mps_daemon.server_matches(server, 50, {0: 1536 * M})
    assert not _mps_daemon.server_matches(server, 50, {0: G})
    assert not _mps_daemon.server_matches(server, 40, {})
    assert _mps_daemon.server_matches(dict(server, logged=None), None, {0: 1536 * M})


def test_directory_problem(tmp_path):
    from ansible_collections.gpulab.mps.plugins.module_utils._trust import directory_problem
    a_file = tmp_path / "file"
    a_file.write_text("")
    uid = os.geteuid()
    assert directory_problem(str(tmp_path / "new" / "pipe"), uid) is None
    assert directory_problem(str(a_file), uid) == "%s is not a directory" % a_file
    assert "is not a directory" in directory_problem(str(a_file / "pipe"), uid)


# --- main(): start ------------------------------------------------------------------------------------

@pytest.mark.parametrize("check_mode", [True, False])
def test_start_from_nothing(run_module, fake_cli, standin_nvml, host, check_mode):
    ctl = host["ctl"]
    fake_cli.expect(ctl, "get_server_list", *NO_DAEMON)
    if not check_mode:
        fake_cli.expect(ctl + ["-d"], None, "", effect=host["running"])
        fake_cli.expect(ctl, "get_server_list", "")
        fake_cli.expect(ctl, "set_default_active_thread_percentage 50", *transcript_output("07_set_default_atp_50.txt"))
        fake_cli.expect(ctl, "set_default_device_pinned_mem_limit 0 1536M", "")
        fake_cli.expect(ctl, "get_default_device_pinned_mem_limit 0", *transcript_output("14_get_pinned_after_M.txt"))
        expect_idle_snapshot(fake_cli, ctl, pinned="1G")
    result, failed = run_module(mps_daemon, dict(host["args"], default_active_thread_percentage=50,
                                                 default_pinned_memory_limit="1536M"), check_mode=check_mode, diff=True)
    fake_cli.done()
    assert not failed, result["msg"]
    assert result["changed"]
    assert result["daemon"]["running"]
    # The exact value, not the CLI's rounded "1G": the module recorded what it set.
    assert result["defaults"] == {"active_thread_percentage": 50.0, "pinned_memory_limit": {"0": "1536M"}}
    assert result["diff"]["before"]["state"] == "stopped" and result["diff"]["after"]["state"] == "running"
    assert result["requested"] == {"active_thread_percentage": 50.0, "pinned_memory_limit": {"0": "1536M"},
                                   "visible_devices": None}
    assert host["pipe"].is_dir() != check_mode
    if not check_mode:
        assert stat.S_IMODE(host["pipe"].stat().st_mode) == 0o755
        # The daemon's environment is the plan's, built here: nothing of the environment the module ran with.
        assert fake_cli.calls[1]["env"] == {"CUDA_MPS_PIPE_DIRECTORY": str(host["pipe"]),
                                            "CUDA_MPS_LOG_DIRECTORY": str(host["log"]), "LANG": "C", "LC_ALL": "C",
                                            "PATH": os.path.dirname(host["ctl"][0]) + ":" + SAFE_PATH}


@pytest.mark.parametrize("check_mode", [True, False])
def test_running_with_the_same_defaults_changes_nothing(run_module, fake_cli, standin_nvml, host, check_mode):
    host["running"]()
    host["log"].mkdir()
    # One snapshot: nothing is done, so the state after is the state before.
    expect_idle_snapshot(fake_cli, host["ctl"])
    result, failed = run_module(mps_daemon, dict(host["args"], default_active_thread_percentage=50,
                                                 default_pinned_memory_limit="2G"), check_mode=check_mode)
    fake_cli.done()
    assert not failed and not result["changed"]
    assert not any(c["data"] and c["data"].startswith("set_") for c in fake_cli.calls)


@pytest.mark.parametrize("check_mode", [True, False])
def test_the_multiuser_server_is_started_with_dash_m(run_module, fake_cli, host, check_mode):
    ctl = host["ctl"]
    fake_cli.expect(ctl, "get_server_list", *NO_DAEMON)
    if not check_mode:
        fake_cli.expect(ctl + ["-d", "-M"], None, "", effect=host["running"])
        fake_cli.expect(ctl, "get_server_list", "")
        expect_idle_snapshot(fake_cli, ctl, atp="100.0", pinned=None)
    result, failed = run_module(mps_daemon, dict(host["args"], multiuser_server=True), check_mode=check_mode)
    fake_cli.done()
    assert not failed and result["changed"], result.get("msg")
    assert [c["argv"] for c in fake_cli.calls if "-d" in c["argv"]] == ([] if check_mode else [ctl + ["-d", "-M"]])


def test_a_running_daemon_without_dash_m_is_reported_not_restarted(run_module, fake_cli, host):
    host["running"]()  # a daemon process started without -M
    host["log"].mkdir()
    expect_idle_snapshot(fake_cli, host["ctl"], atp="100.0", pinned=None)  # nothing done: one snapshot
    result, failed = run_module(mps_daemon, dict(host["args"], multiuser_server=True))
    fake_cli.done()
    assert not failed and not result["changed"]
    assert any("was started without -M (multi-user server), not with" in w for w in result.get("warnings", []))


def test_a_rounded_read_back_is_set_once_then_trusted(run_module, fake_cli, standin_nvml, host):
    daemon = host["running"]()
    host["log"].mkdir()
    ctl = host["ctl"]
    expect_idle_snapshot(fake_cli, ctl, pinned="1G")
    fake_cli.expect(ctl, "set_default_device_pinned_mem_limit 0 1536M", "")
    fake_cli.expect(ctl, "get_default_device_pinned_mem_limit 0", "1G\n")
    expect_idle_snapshot(fake_cli, ctl, pinned="1G")
    first = run_module(mps_daemon, dict(host["args"], default_pinned_memory_limit="1536M"))[0]
    assert first["changed"]
    record = StateRecord(str(host["state"]), str(host["pipe"]))
    written = json.loads((host["state"] / record.name).read_text())
    assert written["daemon"][0] == daemon.pid and written["pinned_memory_limit"] == {"0": 1536 * M}
    assert written["pipe_directory"] == str(host["pipe"]) and written["applied_at_start"] is False
    # What the collection writes is not in the pipe directory, which MPS opens to every user.
    assert sorted(os.listdir(host["pipe"])) == ["control", PID_FILE]
    expect_idle_snapshot(fake_cli, ctl, pinned="1G")
    second = run_module(mps_daemon, dict(host["args"], default_pinned_memory_limit="1536M"))[0]
    fake_cli.done()
    assert not second["changed"]
    assert second["defaults"]["pinned_memory_limit"] == {"0": "1536M"}


def test_a_record_of_another_daemon_is_not_trusted(run_module, fake_cli, standin_nvml, host):
    host["running"]()
    host["state"].mkdir()
    StateRecord(str(host["state"]), str(host["pipe"])).write([1, 5], {0: 1536 * M}, False)
    expect_idle_snapshot(fake_cli, host["ctl"], pinned="1G")
    result = run_module(mps_daemon, dict(host["args"], default_pinned_memory_limit="1536M"), check_mode=True)[0]
    assert result["changed"]


def test_a_value_the_cli_did_not_take_fails(run_module, fake_cli, standin_nvml, host):
    host["running"]()
    ctl = host["ctl"]
    expect_idle_snapshot(fake_cli, ctl, atp="100.0")
    # What the H100's CLI answers to a value it ignores: the old value (08_set_default_atp_bad.txt).
    fake_cli.expect(ctl, "set_default_active_thread_percentage 40", "100.0\n")
    result, failed = run_module(mps_daemon, dict(host["args"], default_active_thread_percentage=40))
    assert failed
    assert result["msg"] == "MPS kept default active thread percentage 100 after setting 40"


@pytest.mark.parametrize("extra, message", [
    ({"default_active_thread_percentage": 0}, "default_active_thread_percentage must be between 1 and 100, got 0"),
    ({"default_active_thread_percentage": 150}, "default_active_thread_percentage must be between 1 and 100, got 150"),
    ({"default_pinned_memory_limit": "lots"}, "'lots' is not a memory size"),
    ({"default_pinned_memory_limit": {"7": "2G"}}, "device index 7 does not exist (this host has 1 GPU: 0)"),
    ({"default_pinned_memory_limit": {"GPU-ffffffff": "2G"}}, "no GPU has UUID GPU-ffffffff"),
    ({"visible_devices": ["3"]}, "device index 3 does not exist"),
    ({"directory_mode": "rwx"}, "directory_mode must be a mode such as"),
    ({"timeout": 0}, "timeout must be a whole number of seconds from 1 to 3600"),
])
@pytest.mark.parametrize("check_mode", [True, False])
def test_bad_input_fails_before_any_command(run_module, fake_cli, standin_nvml, host, extra, message, check_mode):
    result, failed = run_module(mps_daemon, dict(host["args"], **extra), check_mode=check_mode)
    assert failed
    assert result["msg"].startswith("Invalid MPS settings, nothing was changed: ")
    assert message in result["msg"]
    assert fake_cli.calls == []
    assert not host["pipe"].exists() and not host["log"].exists()


def test_a_pipe_directory_under_a_file_is_refused(run_module, fake_cli, host, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    result, failed = run_module(mps_daemon, dict(host["args"], pipe_directory=str(blocker / "pipe")))
    assert failed and "pipe_directory: %s is not a directory" % blocker in result["msg"]
    assert fake_cli.calls == []


def test_no_driver_is_a_clear_error(run_module, fake_cli, standin_nvml, host, monkeypatch):
    monkeypatch.setenv("GPULAB_STANDIN_NVML", "library-not-found")
    result, failed = run_module(mps_daemon, dict(host["args"], default_pinned_memory_limit="2G"))
    assert failed
    assert "libnvidia-ml.so.1 was not found. Install the NVIDIA driver" in result["msg"]
    assert fake_cli.calls == [] and not host["pipe"].exists()


def test_a_daemon_that_does_not_start_reports_its_log(run_module, fake_cli, host):
    ctl = host["ctl"]
    fake_cli.expect(ctl, "get_server_list", *NO_DAEMON)
    fake_cli.expect(ctl + ["-d"], None, *transcript_output("02_start_daemon_again.txt"))
    result, failed = run_module(mps_daemon, host["args"])
    assert failed
    assert result["msg"].startswith("MPS control daemon in %s did not start (a daemon process holds the pipe "
                                    "directory but does not answer): An instance of this daemon is already running"
                                    % host["pipe"])
    assert result["cmd"] == ctl + ["-d"] and result["rc"] == 1


# --- main(): running servers --------------------------------------------------------------------------

def test_new_defaults_leave_a_busy_server_alone(run_module, fake_cli, standin_nvml, host):
    host["running"]()
    ctl = host["ctl"]
    expect_busy_snapshot(fake_cli, ctl)
    fake_cli.expect(ctl, "set_default_active_thread_percentage 40", "40.0\n")
    expect_busy_snapshot(fake_cli, ctl, atp="40.0", server_atp="50.0")
    result, failed = run_module(mps_daemon, dict(host["args"], default_active_thread_percentage=40,
                                                 apply_to_running="restart"))
    fake_cli.done()
    assert not failed and result["changed"]
    assert result["restarted_servers"] == []
    assert result["servers"][0]["matches_defaults"] is False
    assert any("MPS server 486 still runs with the values it started with" in w and
               "Left alone because it has 1 client" in w for w in result["warnings"])


# --- main(): stop -------------------------------------------------------------------------------------

@pytest.mark.parametrize("check_mode", [True, False])
def test_stop_is_refused_while_clients_are_attached(run_module, fake_cli, host, check_mode):
    host["running"]()
    expect_busy_snapshot(fake_cli, host["ctl"])
    result, failed = run_module(mps_daemon, dict(host["args"], state="stopped"), check_mode=check_mode)
    fake_cli.done()
    assert failed
    assert result["msg"] == ("Refusing to stop the MPS control daemon in %s: 1 client attached: 497 (python3, server "
                             "486). Stop them first, or set force=true to shut their servers down (their work is "
                             "lost)." % host["pipe"])
    assert "quit" not in [c["data"] for c in fake_cli.calls]
    assert (host["pipe"] / PID_FILE).exists()


@pytest.mark.parametrize("check_mode", [True, False])
def test_forced_stop_quits_with_a_timeout_and_removes_stale_sockets(run_module, fake_cli, host, check_mode):
    host["pipe"].mkdir(parents=True)
    # The daemon's pid file names a process that is gone once quit returns (here: none at all).
    expect_busy_snapshot(fake_cli, host["ctl"])
    if not check_mode:
        fake_cli.expect(host["ctl"], "quit -t 7", *transcript_output("30_quit_t.txt"))
        fake_cli.expect(host["ctl"], "get_server_list", *NO_DAEMON)
        fake_cli.expect(host["ctl"], "get_server_list", *NO_DAEMON)
    # What a quit leaves (31_after_quit.txt): two sockets and control_lock, an empty file.
    for name in ("control", "control_privileged"):
        make_socket(host["pipe"] / name)
    (host["pipe"] / "control_lock").write_text("")
    result, failed = run_module(mps_daemon, dict(host["args"], state="stopped", force=True, timeout=7),
                                check_mode=check_mode)
    fake_cli.done()
    assert not failed, result.get("msg")
    assert result["changed"]
    assert result["daemon"]["running"] is False
    assert sorted(os.listdir(host["pipe"])) == ([] if not check_mode else ["control", "control_lock",
                                                                           "control_privileged"])


@pytest.mark.parametrize("check_mode", [True, False])
def test_stopping_a_stopped_daemon_changes_nothing(run_module, fake_cli, host, check_mode):
    fake_cli.expect(host["ctl"], "get_server_list", *NO_DAEMON)
    result, failed = run_module(mps_daemon, dict(host["args"], state="stopped"), check_mode=check_mode)
    fake_cli.done()
    assert not failed and not result["changed"]
    assert result["stale_sockets_removed"] == []


@pytest.mark.parametrize("applied_at_start, changed", [(True, False), (False, True)])
def test_a_daemon_restarted_by_its_unit_with_the_right_limits_is_not_changed(
        run_module, fake_cli, standin_nvml, host, applied_at_start, changed):
    """Regression: the exact-limits record was keyed by the daemon's pid, so after any restart the next run said
    changed (the CLI reads 1536M back as 1G), and the fleet's auto drain drained a node for nothing. A record
    written for a unit that applies the same limits at every start holds for the daemon that unit restarted."""
    first = host["running"]()
    host["log"].mkdir()
    ctl = host["ctl"]
    args = dict(host["args"], default_pinned_memory_limit="1536M", defaults_applied_at_start=applied_at_start)
    expect_idle_snapshot(fake_cli, ctl, pinned="1G")
    fake_cli.expect(ctl, "set_default_device_pinned_mem_limit 0 1536M", "")
    fake_cli.expect(ctl, "get_default_device_pinned_mem_limit 0", "1G\n")
    expect_idle_snapshot(fake_cli, ctl, pinned="1G")
    assert run_module(mps_daemon, args)[0]["changed"]
    # systemd restarts the daemon (a new pid); its drop-in set 1536M again, which reads back as 1G.
    first.stop()
    host["running"]()
    expect_idle_snapshot(fake_cli, ctl, pinned="1G")
    result = run_module(mps_daemon, args, check_mode=True)[0]
    fake_cli.done()
    assert result["changed"] is changed
    if not changed:
        assert result["defaults"]["pinned_memory_limit"] == {"0": "1536M"}


@pytest.mark.parametrize("force, command", [(True, "quit -t 7"), (False, "quit")])
def test_force_decides_the_quit_not_an_earlier_snapshot(run_module, fake_cli, host, force, command):
    """Regression: stop() chose `quit` or `quit -t` from the snapshot taken before: with no client in it, a forced
    stop sent a plain `quit`, which waits for a client that attached meanwhile. force decides."""
    daemon = host["running"]()
    expect_idle_snapshot(fake_cli, host["ctl"])
    fake_cli.expect(host["ctl"], command, "", effect=daemon.stop)
    fake_cli.expect(host["ctl"], "get_server_list", *NO_DAEMON, repeat=True)  # until it is gone, and after
    result, failed = run_module(mps_daemon, dict(host["args"], state="stopped", force=force, timeout=7))
    fake_cli.done()
    assert not failed, result.get("msg")
    assert result["changed"] and not result["daemon"]["running"]


# --- several GPUs (issue 15): 4 stand-in GPUs -------------------------------------------------------------------

@pytest.mark.parametrize("check_mode", [True, False])
def test_four_gpus_a_reversed_subset_sends_each_limit_to_its_mps_ordinal(
        run_module, fake_cli, standin_nvml, host, monkeypatch, check_mode):
    """visible_devices [GPU 2 by UUID, GPU 0 by index]: the daemon numbers them 0 and 1 (their position in
    CUDA_VISIBLE_DEVICES), so the limit given by NVML index 0 goes to ordinal 1 and GPU 2's (by UUID) to ordinal 0."""
    monkeypatch.setenv("GPULAB_STANDIN_GPUS", "4")
    uuids = [standin_nvml._uuid(i) for i in range(4)]
    ctl = host["ctl"]
    fake_cli.expect(ctl, "get_server_list", *NO_DAEMON)
    if not check_mode:
        fake_cli.expect(ctl + ["-d"], None, "", effect=host["running"])
        fake_cli.expect(ctl, "get_server_list", "")
        fake_cli.expect(ctl, "set_default_device_pinned_mem_limit 0 3G", "")
        fake_cli.expect(ctl, "get_default_device_pinned_mem_limit 0", "3G\n")
        fake_cli.expect(ctl, "set_default_device_pinned_mem_limit 1 2G", "")
        fake_cli.expect(ctl, "get_default_device_pinned_mem_limit 1", "2G\n")
        expect_idle_snapshot(fake_cli, ctl, atp="100.0", pinned=None, devices=())
        fake_cli.expect(ctl, "get_default_device_pinned_mem_limit 0", "3G\n")
        fake_cli.expect(ctl, "get_default_device_pinned_mem_limit 1", "2G\n")
    result, failed = run_module(mps_daemon, dict(host["args"], visible_devices=[uuids[2], "0"],
                                                 default_pinned_memory_limit={"0": "2G", uuids[2]: "3G"}),
                                check_mode=check_mode)
    fake_cli.done()
    assert not failed, result["msg"]
    assert result["devices"] == {"0": uuids[2], "1": uuids[0]}
    assert result["requested"] == {"active_thread_percentage": None, "pinned_memory_limit": {"0": "3G", "1": "2G"},
                                   "visible_devices": [uuids[2], uuids[0]]}
    if not check_mode:
        # The daemon (and so its server) sees GPU 2 then GPU 0, by UUID, at start and on every call.
        assert all(c["env"].get("CUDA_VISIBLE_DEVICES") == "%s,%s" % (uuids[2], uuids[0]) for c in fake_cli.calls)


def test_four_gpus_a_gpu_outside_visible_devices_is_refused_by_index_and_by_uuid(run_module, fake_cli, standin_nvml,
                                                                                 host, monkeypatch):
    monkeypatch.setenv("GPULAB_STANDIN_GPUS", "4")
    uuids = [standin_nvml._uuid(i) for i in range(4)]
    result, failed = run_module(mps_daemon, dict(host["args"], visible_devices=["2", "0"],
                                                 default_pinned_memory_limit={"1": "2G", uuids[3]: "2G"}))
    assert failed and fake_cli.calls == []
    assert result["errors"] == ["default_pinned_memory_limit: device 1 (GPU 1) is not in visible_devices",
                                "default_pinned_memory_limit: device %s (GPU 3) is not in visible_devices" % uuids[3]]
