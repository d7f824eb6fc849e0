# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_mps_recovery: which clients of a server in FAULT may be ended (the decision, on snapshots shaped as the H200's),
and that a PID is signalled only while it is the very process that was read."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.gpulab.mps.plugins.module_utils import _mps_recovery as recovery
from ansible_collections.gpulab.mps.plugins.module_utils._trust import process_start

HOST_NS = "4026531836"
POD_NS = "4026532174"


def snapshot(*servers):
    """servers: (pid, status, [(client pid, namespace)])."""
    return {"servers": [{"pid": pid, "status": status, "clients": [c for c, _ns in clients]}
                        for pid, status, clients in servers],
            "clients": [{"pid": c, "id": 1, "server": pid, "device": "GPU-0", "namespace": ns, "command": "python3"}
                        for pid, _status, clients in servers for c, ns in clients if ns is not None]}


def starts(table):
    return table.get


# Server 492 runs for uid 0; the kernel puts every process of these tables in the host's namespace unless told.
SERVER = {492: ("S", 50, 0), 510: ("S", 51, 0)}


def decide(state, table, kernel=None, namespace=HOST_NS, multiuser=False):
    seen = dict(SERVER)
    seen.update(table)
    return recovery.plan(state, namespace, starts(seen), namespaces=lambda pid: (kernel or {}).get(pid, HOST_NS),
                         multiuser=multiuser)


# The H200's sticky experiment: server 492 in FAULT with clients 449 and 637, both alive.
def test_the_clients_of_the_fault_server_are_ended_and_no_other():
    state = snapshot((492, "FAULT", [(449, HOST_NS), (637, HOST_NS)]), (510, "ACTIVE", [(700, HOST_NS)]))
    decided = decide(state, {449: ("S", 100, 0), 637: ("S", 101, 0), 700: ("S", 102, 0)})
    assert decided["servers"] == [492]
    assert decided["end"] == [{"pid": 449, "server": 492, "start": 100, "command": "python3"},
                              {"pid": 637, "server": 492, "start": 101, "command": "python3"}]
    assert decided["refused"] == [] and decided["gone"] == []


def test_no_fault_no_decision():
    state = snapshot((492, "ACTIVE", [(449, HOST_NS)]))
    assert decide(state, {449: ("S", 1, 0)}) == {"servers": [], "end": [], "refused": [], "gone": []}


@pytest.mark.parametrize("namespace", [POD_NS, None])
def test_a_client_of_another_or_an_unknown_namespace_is_refused(namespace):
    state = snapshot((492, "FAULT", [(449, HOST_NS), (900, namespace)]))
    decided = decide(state, {449: ("S", 1, 0), 900: ("S", 2, 0)})
    assert [t["pid"] for t in decided["end"]] == [449]
    assert [r["pid"] for r in decided["refused"]] == [900]
    assert ("end that pod" in decided["refused"][0]["reason"]) if namespace else \
        ("not in the daemon's ps table" in decided["refused"][0]["reason"])


def test_unknown_own_namespace_refuses_everything():
    state = snapshot((492, "FAULT", [(449, HOST_NS)]))
    decided = decide(state, {449: ("S", 1, 0)}, namespace=None)
    assert decided["end"] == [] and [r["pid"] for r in decided["refused"]] == [449]


@pytest.mark.parametrize("seen", [None, ("Z", 1, 0)])
def test_a_client_that_exited_is_gone_not_ended(seen):
    state = snapshot((492, "FAULT", [(449, HOST_NS)]))
    decided = decide(state, {449: seen})
    assert decided["end"] == [] and decided["gone"] == [{"pid": 449, "server": 492}]


def forged(state, pid, server, namespace=HOST_NS):
    """A row that a client's argv[0] printed (the H200's ps prints argv[0] raw): it names `pid` under `server`."""
    state["clients"].append({"pid": pid, "id": 9, "server": server, "device": "GPU-0", "namespace": namespace,
                             "command": "x"})
    return state


def test_a_pid_whose_rows_disagree_on_the_server_is_refused():
    """Regression (issue 20, "killing what is not ours"): rows were keyed by PID alone, so a row printed inside a
    client's name could stand for another process; a PID is ended only when every row naming it agrees."""
    state = forged(snapshot((492, "FAULT", [(449, HOST_NS)]), (510, "ACTIVE", [(700, HOST_NS)])), 449, 510)
    decided = decide(state, {449: ("S", 1, 0), 700: ("S", 2, 0)})
    assert decided["end"] == [] and "rows disagree" in decided["refused"][0]["reason"]


def test_a_pid_whose_rows_disagree_on_the_namespace_is_refused():
    state = forged(snapshot((492, "FAULT", [(449, POD_NS)])), 449, 492, HOST_NS)
    decided = decide(state, {449: ("S", 1, 0)})
    assert decided["end"] == [] and [r["pid"] for r in decided["refused"]] == [449]


def test_a_pid_the_kernel_puts_in_another_namespace_is_refused():
    state = snapshot((492, "FAULT", [(449, HOST_NS)]))
    decided = decide(state, {449: ("S", 1, 0)}, kernel={449: POD_NS})
    assert decided["end"] == [] and "the kernel says %s" % POD_NS in decided["refused"][0]["reason"]


def test_a_process_of_another_user_is_not_a_client_of_that_users_server():
    state = snapshot((492, "FAULT", [(449, HOST_NS)]))
    decided = decide(state, {449: ("S", 1, 1000)})
    assert decided["end"] == [] and "belongs to uid 1000" in decided["refused"][0]["reason"]
    # A multi-user server (-M) runs as root and serves every user's clients.
    assert [t["pid"] for t in decide(state, {449: ("S", 1, 1000)}, multiuser=True)["end"]] == [449]


def test_own_namespace_is_the_proc_link():
    assert recovery.own_pid_namespace() == os.readlink("/proc/self/ns/pid").split("[")[1].rstrip("]")


@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_a_pid_whose_start_time_changed_is_not_signalled(sleeper):
    """The PID was read, then the process went and the PID came to another one: that one must survive."""
    state, start, _ticks = process_start(sleeper.pid)
    out = recovery.end_processes([{"pid": sleeper.pid, "server": 1, "start": start + 1}], term_wait=1, kill_wait=1)
    assert out["vanished"] == [sleeper.pid] and out["ended"] == [] and out["killed"] == []
    time.sleep(0.2)
    assert sleeper.poll() is None


def test_the_same_process_is_ended_with_sigterm(sleeper):
    start = process_start(sleeper.pid)[1]
    out = recovery.end_processes([{"pid": sleeper.pid, "server": 1, "start": start}], term_wait=5, kill_wait=1)
    assert out["ended"] == [sleeper.pid] and out["killed"] == [] and out["survived"] == []
    assert sleeper.wait(timeout=5) == -signal.SIGTERM


# A live server process of this test's user: the clients' owner must be the server's.
SERVER_PID = os.getpid()


class FakeControl(object):
    """The two reads wait_recovered makes; the server is ACTIVE once `after` reads have been made."""

    def __init__(self, statuses):
        self.statuses = list(statuses)

    def server_list(self):
        return [SERVER_PID]

    def server_status(self, pid):
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]


def test_check_mode_predicts_without_signalling(sleeper):
    start = process_start(sleeper.pid)[1]
    state = snapshot((SERVER_PID, "FAULT", [(sleeper.pid, HOST_NS)]))
    out = recovery.recover(FakeControl(["FAULT"]), state, check_mode=True, namespace=HOST_NS)
    assert out["would_end"] == [sleeper.pid] and out["signals"] is None
    assert out["status_after"] == {SERVER_PID: "ACTIVE"} and out["end"][0]["start"] == start
    assert "would end client %d" % sleeper.pid in recovery.describe(out, check_mode=True)
    time.sleep(0.2)
    assert sleeper.poll() is None


def test_recover_waits_until_the_server_is_active(sleeper):
    state = snapshot((SERVER_PID, "FAULT", [(sleeper.pid, HOST_NS)]))
    out = recovery.recover(FakeControl(["FAULT", "FAULT", "ACTIVE"]), state, timeout=5, namespace=HOST_NS)
    assert out["signals"]["ended"] == [sleeper.pid] and out["status_after"] == {SERVER_PID: "ACTIVE"}
    assert "ended client %d; now ACTIVE" % sleeper.pid in recovery.describe(out)
