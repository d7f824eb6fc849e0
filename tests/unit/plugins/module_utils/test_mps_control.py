# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parsers of the MPS control CLI (_mps_output), over output recorded on an H100 with driver 580, and the client
(_mps_control) over the same recordings."""

from __future__ import annotations

import os

import pytest

from ansible_collections.gpulab.mps.plugins.module_utils import _mps_control as mc
from ansible_collections.gpulab.mps.plugins.module_utils import _mps_output as out
from ansible_collections.gpulab.mps.plugins.module_utils._command import SAFE_PATH
from conftest import load_transcript, make_socket, transcript_output, transcript_text


@pytest.mark.parametrize("name, expected", [
    ("04_server_list_empty.txt", []),
    ("21_server_list_busy.txt", [486]),
    ("23_client_list.txt", [497]),
])
def test_pid_lists(name, expected):
    output, rc = transcript_output(name)
    assert rc == 0
    assert out.parse_pid_list(output) == expected


def test_pid_list_rejects_other_text():
    with pytest.raises(out.OutputError):
        out.parse_pid_list(transcript_output("05_ps_empty.txt")[0])


def test_ps_without_server():
    assert out.parse_ps(transcript_output("05_ps_empty.txt")[0]) == []


def test_ps_table():
    assert out.parse_ps(transcript_output("22_ps_busy.txt")[0]) == [{
        "pid": 497, "id": 2, "server": 486, "device": "GPU-058fcf08-fc4a-49f5",
        "namespace": "4026531836", "command": "python3"}]


def test_ps_command_with_spaces_and_unexpected_header():
    table = ("PID       ID        SERVER         DEVICE                    NAMESPACE      COMMAND        \n"
             "12        1         7              GPU-058fcf08-fc4a-49f5    4026531836     python3 train.py --epochs 3\n")
    assert out.parse_ps(table)[0]["command"] == "python3 train.py --epochs 3"
    with pytest.raises(out.OutputError):
        out.parse_ps("USER PID\nroot 1\n")
    with pytest.raises(out.OutputError):
        out.parse_ps("PID ID SERVER DEVICE NAMESPACE COMMAND\nabc 1 2 GPU-x 1 python3\n")


def test_server_status():
    assert out.parse_server_status(transcript_output("24_server_status.txt")[0]) == "ACTIVE"


@pytest.mark.parametrize("name, expected", [
    ("06_get_default_atp.txt", 100.0),
    ("07_set_default_atp_50.txt", 50.0),
    # The CLI ignores an invalid value and echoes the OLD one: the caller must compare.
    ("08_set_default_atp_bad.txt", 50.0),
    ("09_set_default_atp_garbage.txt", 50.0),
    ("26_atp_of_server.txt", 50.0),
])
def test_percentages(name, expected):
    assert out.parse_percentage(transcript_output(name)[0]) == expected


@pytest.mark.parametrize("name, expected", [
    ("10_get_pinned_unset.txt", None),
    ("12_get_pinned_4G.txt", "4G"),
    ("14_get_pinned_after_M.txt", "1G"),
])
def test_pinned_limits(name, expected):
    assert out.parse_pinned_limit(transcript_output(name)[0]) == expected


def test_unknown_command_exits_zero_and_is_detected():
    output, rc = transcript_output("16_unknown_cmd.txt")
    assert rc == 0
    assert out.unknown_command(output) == "frobnicate"
    assert out.unknown_command(transcript_output("60_cli_exploration.txt", "help")[0]) == "help"
    assert out.unknown_command(transcript_output("22_ps_busy.txt")[0]) is None


def test_server_log_of_the_capture_run():
    servers = out.parse_server_log(transcript_text("33_server_log.txt"))
    assert list(servers) == [486]
    server = servers[486]
    assert server["active_thread_percentage"] == 50.0
    assert server["started"] is True
    # The last pinned command before this server started was `... 0 lots`, which removed the limit.
    assert server["pinned_memory_limit"] == {}
    assert server["unable_to_shutdown_clients"] == 2


def test_server_log_of_the_exploration_run():
    text = transcript_text("60_cli_exploration.txt")
    servers = out.parse_server_log(text[text.index("-- server.log"):])
    # Started with 2G on devices 7 (which does not exist: the CLI accepted it) and 0, then the running
    # server was set to 1G on device 0 with set_device_pinned_mem_limit.
    assert servers[537]["active_thread_percentage"] == 40.0
    assert servers[537]["pinned_memory_limit"] == {7: 0x80000000, 0: 0x40000000}


def test_control_log_lines():
    entries = out.parse_log_lines(transcript_text("32_control_log.txt"))
    assert entries[0] == {"time": "2026-11-23 10:56:43.518", "source": "Control", "pid": 407,
                          "message": "Starting control daemon using socket /tmp/cap_pipe/control"}
    assert "Force shutting down server 486" in [e["message"] for e in entries]


def _listing(name):
    return [line.split()[-1] for line in transcript_output(name)[0].splitlines()
            if line and line[0] in "-sp" and not line.endswith((" .", " .."))]


def test_pipe_directory_of_a_running_daemon():
    names = _listing("03_pipe_dir_listing.txt")
    assert out.parse_pipe_directory(names) == {
        "pid_file": True, "log_fifo": True, "sockets": ["control", "control_lock", "control_privileged"]}


def test_pipe_directory_after_quit_holds_stale_sockets():
    names = _listing("31_after_quit.txt")
    assert out.parse_pipe_directory(names) == {
        "pid_file": False, "log_fifo": False, "sockets": ["control", "control_lock", "control_privileged"]}


def test_with_exact_limits_replaces_a_rounded_read_back_only_when_consistent():
    defaults = {"active_thread_percentage": 50.0, "pinned_memory_limit": {"0": "1G", "1": "2G"}}
    exact = mc.with_exact_limits(defaults, {0: 1536 << 20, 1: 1536 << 20})
    assert exact["pinned_memory_limit"] == {"0": "1536M", "1": "2G"}


def test_control_reports_no_daemon_from_its_exit_code(tmp_path, cli_answers):
    output, rc = transcript_output("00_control_no_daemon.txt")
    cli = cli_answers({"get_server_list": (rc, output)})
    control = mc.MpsControl("/usr/bin/nvidia-cuda-mps-control", str(tmp_path / "pipe"), str(tmp_path / "log"))
    assert control.is_running() is False
    assert cli.calls == [{"argv": ["/usr/bin/nvidia-cuda-mps-control"], "data": "get_server_list", "env": {
        "PATH": "/usr/bin:" + SAFE_PATH, "LANG": "C", "LC_ALL": "C",
        "CUDA_MPS_PIPE_DIRECTORY": str(tmp_path / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(tmp_path / "log")}}]


def test_the_environment_is_the_plans_not_the_callers(tmp_path, cli_answers, monkeypatch):
    """Regression (issue 20, "inherited state"): run_command laid the module's environment under every call, so a
    CUDA_VISIBLE_DEVICES of the controller reached the daemon and moved the planned limits to another GPU. The
    failed-before form of this test is tests/hostile's; here, what each call gets is exactly the plan's."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setenv("LD_PRELOAD", "/tmp/evil.so")
    cli = cli_answers({"get_server_list": (0, "")})
    plan = {"control_binary": "/opt/nv/nvidia-cuda-mps-control", "pipe_directory": str(tmp_path),
            "log_directory": "/var/log/nvidia-mps", "state_directory": None,
            "daemon": {"environment": {"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path), "CUDA_VISIBLE_DEVICES": "GPU-a",
                                       "CUDA_MPS_LOG_DIRECTORY": "/var/log/nvidia-mps", "PYTHONPATH": "/tmp/x"}}}
    mc.MpsControl.from_plan(plan).server_list()
    assert cli.calls[0]["env"] == {
        "PATH": "/opt/nv:" + SAFE_PATH, "LANG": "C", "LC_ALL": "C", "CUDA_MPS_PIPE_DIRECTORY": str(tmp_path),
        "CUDA_MPS_LOG_DIRECTORY": "/var/log/nvidia-mps", "CUDA_VISIBLE_DEVICES": "GPU-a"}


def test_control_turns_unknown_command_into_an_error(tmp_path, cli_answers):
    cli_answers({"frobnicate": (0, transcript_output("16_unknown_cmd.txt")[0])})
    control = mc.MpsControl("/bin/ctl", str(tmp_path))
    with pytest.raises(mc.MpsControlError, match="does not know the command 'frobnicate'"):
        control.run("frobnicate")


def test_snapshot_of_a_busy_daemon(tmp_path, daemon_process, fake_cli):
    pipe = tmp_path / "pipe"
    daemon = daemon_process(pipe)
    for command, name in (("get_server_list", "21_server_list_busy.txt"), ("get_server_status 486", "24_server_status.txt"),
                          ("get_client_list 486", "23_client_list.txt"),
                          ("get_active_thread_percentage 486", "26_atp_of_server.txt"),
                          ("get_device_pinned_mem_limit 486 0", "12_get_pinned_4G.txt"), ("ps", "22_ps_busy.txt"),
                          ("get_default_active_thread_percentage", "06_get_default_atp.txt"),
                          ("get_default_device_pinned_mem_limit 0", "12_get_pinned_4G.txt")):
        output, rc = transcript_output(name)
        fake_cli.expect(["/bin/ctl"], command, output, rc)
    log = tmp_path / "log"
    log.mkdir()
    (log / "server.log").write_text(transcript_text("33_server_log.txt"))
    state = mc.MpsControl("/bin/ctl", str(pipe), str(log)).snapshot([0])
    fake_cli.done()
    assert state["running"] is True and state["pid"] == daemon.pid
    assert state["defaults"] == {"active_thread_percentage": 100.0, "pinned_memory_limit": {"0": "4G"}}
    assert state["servers"] == [{"pid": 486, "status": "ACTIVE", "clients": [497], "active_thread_percentage": 50.0,
                                 "pinned_memory_limit": {"0": "4G"},
                                 "logged": {"active_thread_percentage": 50.0, "pinned_memory_limit": {}}}]
    assert state["clients"][0]["pid"] == 497


def test_snapshot_of_a_stopped_daemon_lists_stale_sockets(tmp_path, cli_answers):
    for name in ("control", "control_lock", "control_privileged"):
        make_socket(tmp_path / name)
    output, rc = transcript_output("00_control_no_daemon.txt")
    cli_answers({"get_server_list": (rc, output)})
    state = mc.MpsControl("/bin/ctl", str(tmp_path)).snapshot([0])
    assert state["running"] is False
    assert state["stale_sockets"] == ["control", "control_lock", "control_privileged"]


def test_every_recorded_control_transcript_parses():
    """No recorded output of the control CLI makes a parser raise: each one has a parser that takes it."""
    parsers = {"get_server_list": out.parse_pid_list, "get_client_list": out.parse_pid_list, "ps": out.parse_ps,
               "get_server_status": out.parse_server_status,
               "get_default_active_thread_percentage": out.parse_percentage,
               "set_default_active_thread_percentage": out.parse_percentage,
               "get_active_thread_percentage": out.parse_percentage,
               "get_default_device_pinned_mem_limit": out.parse_pinned_limit,
               "get_device_pinned_mem_limit": out.parse_pinned_limit}
    seen = 0
    for name in sorted(os.listdir(os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "h100-transcripts"))):
        if not name.endswith(".txt"):
            continue
        for entry in load_transcript(name):
            if not entry["stdin"] or entry["rc"] != 0:
                continue
            parser = parsers.get(entry["stdin"].split()[0])
            if parser and not (entry["stdin"].split()[0] == "get_server_list" and "Cannot" in entry["output"]):
                parser(entry["output"])
                seen += 1
    assert seen >= 30


def test_default_client_priority():
    """`get_default_client_priority` printed 0 on the H100 (driver 580): the driver's default, normal priority."""
    assert out.parse_client_priority(transcript_output("60_cli_exploration.txt", "get_default_client_priority")[0]) == 0
    with pytest.raises(out.OutputError):
        out.parse_client_priority(transcript_output("16_unknown_cmd.txt")[0])
    with pytest.raises(out.OutputError):
        out.parse_client_priority("")


def test_server_log_gives_the_server_priority():
    assert out.parse_server_log(transcript_text("33_server_log.txt"))[486]["priority"] == 0


def test_client_log_entries_of_the_capture_run():
    """What the server said about each client, by PID; the negative PID of a request is no client."""
    entries = out.client_log_entries(transcript_text("33_server_log.txt"), [465, 497, 999])
    assert sorted(entries) == [465, 497, 999]
    assert entries[999] == []
    messages = [e["message"] for e in entries[497]]
    assert messages[0] == "Client {PID: 497, Context ID: 0} connected"
    assert "Status of client {PID: 497, Context ID: 1} is ACTIVE" in messages
    assert all(e["server"] == 486 for e in entries[465] + entries[497])
    assert [e["context"] for e in entries[465]][:2] == [0, 0]
    assert not any("-1333654781" in e["message"] for e in entries[465])
