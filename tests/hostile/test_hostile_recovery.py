# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 20, killing what is not ours: mps_daemon fault_recovery=end_clients must never signal a process that is not
a client of the server in FAULT.

In every case root's client of root's server (S) hits a fatal GPU error (the stand-in's hidden hook standin_fault),
so S is in FAULT until that client ends; beside it stand victims, each a live process that recovery must leave
alone: a process of root's and one of another user that are nobody's client, a client of another server, a process of
another user, a PID that a pod's client has inside its namespace. After the task the victims live, root's client was
ended, S is ACTIVE again and the task succeeded. Check mode first: it would end root's client and no victim, and
signals nothing.

Where the stand-in cannot make the situation (a pod's client, a reused PID), a scripted CLI (scripted_mps_control.py:
the stand-in's answers plus the rows the H200 would print) stands in front of it.
"""

from __future__ import annotations

import json
import os

import pytest

import _hostile as h

pytestmark = h.NEEDS_ROOT

SCRIPTED = os.path.join(h.HERE, "scripted_mps_control.py")
POD_NAMESPACE = "4026532999"   # a PID namespace that is not the host's: a pod's


@pytest.fixture
def faulted(lab, procs):
    """Root's daemon; root's client C of root's server S, in FAULT since C hit a fatal GPU error."""
    h.start_daemon(lab)
    client = procs.sleeper()
    server = h.attach(lab, client.pid, uid=0)
    h.fault(lab, client.pid)
    assert h.status(lab, server) == "FAULT"
    return {"client": client, "server": server, "ns": h.host_pid_namespace()}


def scripted(lab, folder, scenario):
    """The scripted CLI, as a control binary, with this scenario."""
    path = os.path.join(folder, "scenario.json")
    with open(path, "w") as handle:
        json.dump(scenario, handle)
    return h.python_wrapper(os.path.join(folder, "nvidia-cuda-mps-control"), SCRIPTED, path)


def recover(lab, folder, binary, check):
    return h.run_module("mps_daemon", {"pipe_directory": lab["pipe"], "log_directory": lab["log"],
                                       "state_directory": lab["state"], "control_binary": binary,
                                       "fault_recovery": "end_clients", "timeout": 30}, folder, check=check)


def assert_only_the_client_ended(lab, folder, faulted, victims, binary=h.CONTROL):
    """Check mode, then for real: root's client ended, every victim alive, the server ACTIVE again."""
    predicted = recover(lab, folder, binary, check=True)
    assert not predicted.get("failed"), h.summary(predicted)
    would = predicted["fault_recovery"]["would_end"]
    assert not set(would) & set(victims), "check mode would end %s, which are not clients of server %d: %s" % (
        sorted(set(would) & set(victims)), faulted["server"], h.summary(predicted))
    assert faulted["client"].pid in would, h.summary(predicted)
    assert faulted["client"].poll() is None and all(h.alive(v) for v in victims)
    done = recover(lab, folder, binary, check=False)
    alive = [v for v in victims if h.alive(v)]
    assert alive == list(victims), "recovery ended %s, which are not clients of server %d: %s" % (
        sorted(set(victims) - set(alive)), faulted["server"], h.summary(done))
    assert h.wait_until(lambda: faulted["client"].poll() is not None, 15), "root's client was not ended"
    assert h.status(lab, faulted["server"]) == "ACTIVE"
    assert not done.get("failed"), h.summary(done)


def test_rows_forged_in_a_client_name_end_no_one(lab, procs, intruder, victim, tmp_path, faulted):
    """(a) The intruder's client (of his own server) has an argv[0] of ps rows that name a process of root's and one
    of another user, neither a client, as clients of S."""
    root_victim, user_victim = procs.sleeper(), procs.sleeper(user=victim)
    forged = "job\n" + "\n".join(h.ps_row(pid, faulted["server"], faulted["ns"], "python3")
                                 for pid in (root_victim.pid, user_victim.pid))
    hostile = procs.sleeper(user=intruder, argv0=forged)
    h.attach(lab, hostile.pid, uid=intruder["uid"])
    assert_only_the_client_ended(lab, str(tmp_path), faulted, [root_victim.pid, user_victim.pid, hostile.pid])


def test_a_forged_row_does_not_move_a_pods_client_into_this_host(lab, procs, intruder, tmp_path, faulted):
    """(a) A client of S runs in a pod: MPS lists it under its PID inside the pod, which on the host is a process of
    root's (the victim). Its real row says the pod's namespace; the intruder's argv[0] adds a row for the same PID in
    the host's namespace, after it."""
    root_victim = procs.sleeper()
    forged = "job\n" + h.ps_row(root_victim.pid, faulted["server"], faulted["ns"], "python3")
    hostile = procs.sleeper(user=intruder, argv0=forged)
    h.attach(lab, hostile.pid, uid=intruder["uid"])
    binary = scripted(lab, str(tmp_path), {
        "client_lists": {str(faulted["server"]): [root_victim.pid]},
        "ps_rows": [h.ps_row(root_victim.pid, faulted["server"], POD_NAMESPACE, "python3", client_id=7)]})
    assert_only_the_client_ended(lab, str(tmp_path), faulted, [root_victim.pid, hostile.pid], binary)


def test_a_client_of_another_server_is_not_ended(lab, procs, victim, tmp_path, faulted):
    """(b) A process of root's is a real client of ANOTHER server (ps says so); S's client list names it too."""
    other = procs.sleeper()
    other_server = h.attach(lab, other.pid, uid=victim["uid"])
    assert other_server != faulted["server"]
    binary = scripted(lab, str(tmp_path), {"client_lists": {str(faulted["server"]): [other.pid]}})
    assert_only_the_client_ended(lab, str(tmp_path), faulted, [other.pid], binary)


def test_a_process_of_another_user_is_not_ended(lab, procs, victim, tmp_path, faulted):
    """(c) S serves root (no -M); the CLI lists a process of another user as its client, with a row that says so (a
    PID reused after a client ended, before the daemon noticed): not root's client, not ended."""
    other = procs.sleeper(user=victim)
    binary = scripted(lab, str(tmp_path), {
        "client_lists": {str(faulted["server"]): [other.pid]},
        "ps_rows": [h.ps_row(other.pid, faulted["server"], faulted["ns"], "python3", client_id=5)]})
    assert_only_the_client_ended(lab, str(tmp_path), faulted, [other.pid], binary)


def test_a_process_of_the_intruder_attached_to_roots_server_is_not_ended(lab, procs, intruder, tmp_path):
    """(c) The same, made by the stand-in itself: it lists the intruder's process as a client of S beside root's
    client. S stays in FAULT while his process lives (as the stand-in has it), so the task may fail, naming it; but it
    must end root's client, not his."""
    h.start_daemon(lab)
    client, other = procs.sleeper(), procs.sleeper(user=intruder)
    server = h.attach(lab, client.pid, uid=0)
    assert h.attach(lab, other.pid, uid=0) == server
    h.fault(lab, client.pid)
    done = recover(lab, str(tmp_path), h.CONTROL, check=False)
    assert h.alive(other.pid), "recovery ended process %d of uid %d, on a server of root's: %s" % (
        other.pid, intruder["uid"], h.summary(done))
    assert h.wait_until(lambda: client.poll() is not None, 15), "root's client was not ended: %s" % h.summary(done)
    if done.get("failed"):
        assert str(other.pid) in done["msg"], h.summary(done)
