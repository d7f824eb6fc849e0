# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""FAULT, a killed server and a killed daemon, as the H200 logged them (tests/unit/fixtures/h200-fault): the log
parsers of _mps_output, the judgement of _mps_health, and MpsControl.health over the CLI answers recorded while a
server was in FAULT and while the daemon answered nothing."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.gpulab.mps.plugins.module_utils import _mps_control as mc
from ansible_collections.gpulab.mps.plugins.module_utils import _mps_health as health
from ansible_collections.gpulab.mps.plugins.module_utils import _mps_output as out

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "h200-fault")


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


def test_server_log_of_a_fault_all_clients_exited():
    faults = out.parse_server_log(fixture("fault-server.log"))[502]["faults"]
    # The client named first (439) was a HEALTHY one: the log names who noticed, the sticky list names all hit.
    assert faults == [{"time": "2026-12-04 01:23:41.102", "noticed_by": 439, "sticky_clients": [439, 703, 442],
                       "refused_clients": [], "recovered": "2026-12-04 01:23:44.082"}]


def test_server_log_of_a_fault_whose_clients_lingered():
    servers = out.parse_server_log(fixture("sticky-server.log"))
    assert servers[492]["faults"] == [{"time": "2026-12-04 01:27:48.239", "noticed_by": 449,
                                       "sticky_clients": [449, 637], "refused_clients": [864],
                                       "recovered": "2026-12-04 01:28:48.418"}]
    # The start-up values are still read from the same log.
    assert servers[492]["active_thread_percentage"] == 100.0 and servers[492]["started"] is True


def test_server_log_without_a_fault_has_no_faults():
    assert out.parse_server_log(fixture("sticky-server.log").split("encountered a fatal")[0])[492]["faults"] == []


def test_control_log_tells_a_killed_server_from_one_shut_down():
    log = out.parse_control_log(fixture("server-control.filtered.log"))
    assert log["daemon_pid"] == 1131
    # 1165 was killed with SIGKILL and logged "exited with status 0" like 1460, which quit shut down.
    assert log["servers"][1165]["requested"] is False and log["servers"][1165]["status"] == 0
    assert log["servers"][1460]["requested"] is True


def test_control_log_reads_only_the_last_daemon():
    two = fixture("server-control.filtered.log") + fixture("sticky-control.filtered.log")
    log = out.parse_control_log(two)
    assert log["daemon_pid"] == 446 and list(log["servers"]) == [492]


def _state(status="ACTIVE", running=True, servers=None, leftovers=None):
    state = {"running": running, "pid": 446 if running else None, "pipe_directory": "/tmp/nvidia-mps",
             "servers": servers if servers is not None else [{"pid": 492, "status": status, "clients": [449, 637]}]}
    if leftovers is not None:
        state["leftovers"] = leftovers
    return state


def test_a_server_in_fault_is_unhealthy_with_what_to_do():
    result = health.assess(_state("FAULT"), server_log=out.parse_server_log(fixture("sticky-server.log")))
    assert result["healthy"] is False and result["faulted_servers"] == [492]
    (problem,) = result["problems"]
    assert problem["kind"] == "server_fault" and problem["clients"] == [449, 637]
    assert "first noticed by client 449" in problem["message"]
    assert "cudaErrorMpsServerNotReady" in problem["message"]
    assert "fault_recovery=end_clients" in problem["action"] and "terminate_client" in problem["action"]


def test_an_active_server_is_healthy():
    healthy = {"healthy": True, "daemon": "running", "faulted_servers": [], "problems": []}
    assert health.assess(_state("ACTIVE")) == healthy


def test_a_server_killed_since_the_daemon_started_is_reported_not_blocking():
    log = out.parse_control_log(fixture("server-control.filtered.log"))
    result = health.assess(dict(_state(servers=[{"pid": 1460, "status": "ACTIVE", "clients": []}]), pid=1131),
                           control_log=log)
    assert result["healthy"] is True
    assert [(p["kind"], p["server"]) for p in result["problems"]] == [("server_exited", 1165)]


def test_a_daemon_that_died_is_told_from_one_stopped():
    died = health.assess(_state(running=False, servers=[], leftovers={"pid_file": True, "log_fifo": True}))
    assert died["daemon"] == "died" and died["healthy"] is False
    assert "crashed or was killed" in died["problems"][0]["message"]
    stopped = health.assess(_state(running=False, servers=[], leftovers={"pid_file": False, "log_fifo": False}),
                            expect_running=False)
    assert stopped == {"healthy": True, "daemon": "stopped", "faulted_servers": [], "problems": []}
    # After a teardown a daemon that died is still a finding.
    assert health.assess(_state(running=False, servers=[], leftovers={"pid_file": True}),
                         expect_running=False)["healthy"] is False


def test_no_daemon_where_one_is_expected():
    result = health.assess(_state(running=False, servers=[]))
    assert result["daemon"] == "stopped" and [p["kind"] for p in result["problems"]] == ["daemon_not_running"]


def test_health_of_the_recorded_fault(tmp_path, daemon_process, cli_answers):
    pipe, log = tmp_path / "pipe", tmp_path / "log"
    daemon_process(pipe)
    log.mkdir()
    (log / "server.log").write_text(fixture("sticky-server.log").split("MPS server requesting")[0])
    answers = dict(json.loads(fixture("sticky-cli.json"))["fault"])
    answers.update({"get_default_active_thread_percentage": [0, "100.0"], "get_default_device_pinned_mem_limit 0":
                    [0, ""], "get_active_thread_percentage 492": [0, "100.0"],
                    "get_device_pinned_mem_limit 492 0": [0, ""]})
    cli_answers(answers)
    state, result = mc.MpsControl("/bin/ctl", str(pipe), str(log)).health([0])
    assert state["servers"][0]["status"] == "FAULT"
    assert result["faulted_servers"] == [492] and result["healthy"] is False


def test_health_of_a_daemon_that_answers_nothing(tmp_path, daemon_process, cli_answers):
    pipe = tmp_path / "pipe"
    daemon_process(pipe)
    recorded = json.loads(fixture("sticky-cli.json"))["unresponsive"]
    assert recorded["get_server_list"][0] is None  # what the H200's daemon did after terminate_client in FAULT
    cli_answers({}, hang=("get_server_list",))
    state, result = mc.MpsControl("/bin/ctl", str(pipe), str(tmp_path / "log")).health([0])
    assert result["daemon"] == "unresponsive" and result["healthy"] is False
    assert state["running"] is None
    assert "terminate_client" in result["problems"][0]["message"]
    assert "did not finish within" in result["problems"][0]["message"]


@pytest.mark.parametrize("status", ["ACTIVE", "FAULT"])
def test_summary_line(status):
    line = health.summary(health.assess(_state(status)))
    assert (line == "healthy") is (status == "ACTIVE")


def test_summary_says_what_to_do():
    """mps_info's fail_unhealthy message and the fleet gate's (the mps_health_summary filter) carry the action."""
    line = health.summary(health.assess(_state("FAULT")))
    assert line.startswith("server_fault: MPS server 492 is in FAULT")
    assert "What to do: end those client processes" in line


def test_a_client_waiting_for_another_users_server_is_reported_not_blocking(tmp_path):
    """Issue 21: without -M, user B's client waited, silently, until user A's had exited (H200 QoS lane, the control
    log of the `plain` daemon, cut while B's client 609 waited for A's server 599; fixtures/h200-multiuser)."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(here, "fixtures", "h200-multiuser", "plain-control.log")) as handle:
        recorded = handle.read()
    during = recorded[:recorded.index("Try shutting down server 599") + 400]
    control_log = out.parse_control_log(during)
    assert control_log["waiting"] == {609: {"uid": 998, "since": "2026-12-04 01:44:27.790", "blocked_by": 599}}
    state = dict(_state(), pid=control_log["daemon_pid"])
    result = health.assess(state, control_log)
    assert [p["kind"] for p in result["problems"]] == ["client_waiting"] and result["healthy"] is True
    assert "mps_host_multiuser_server true" in result["problems"][0]["action"]
    # Once B's client is served, nothing waits.
    assert out.parse_control_log(recorded)["waiting"] == {}
