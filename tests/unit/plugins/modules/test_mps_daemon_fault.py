# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""mps_daemon fault_recovery, run as Ansible runs it, against the STAND-IN control daemon of tests/standins (no GPU)
with real processes as its clients. The stand-in's hidden test hooks make the FAULT: standin_attach_client (a live
process becomes a client; with a uid, of that user's server) and standin_fault (as the H200 did: the server is in
FAULT while any of its clients lives). What must hold: only the clients of the server in FAULT die, and only those
provably of this host; the server is ACTIVE again; check mode and fault_recovery=none kill nothing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from module_file import CONTROL, control, launch, result_of  # noqa: E402

OTHER_UID = 4242  # a user with no process here: the stand-in gives its client a server of its own


def module(tmp_path, check=False, diff=False, **args):
    if diff:
        args["_ansible_diff"] = True
    return result_of(launch("mps_daemon", args, check, str(tmp_path / "args")))


def ctl(lab, command):
    return control(lab["pipe_directory"], lab["log_directory"], command)


def servers(lab):
    return dict((int(pid), ctl(lab, "get_server_status %s" % pid).strip())
                for pid in ctl(lab, "get_server_list").split() if pid.isdigit())


def alive(proc):
    return proc.poll() is None


@pytest.fixture
def lab(tmp_path):
    lab = {"pipe_directory": str(tmp_path / "pipe"), "log_directory": str(tmp_path / "log"),
           "state_directory": str(tmp_path / "state"), "control_binary": CONTROL}
    started = module(tmp_path, **lab)
    assert not started.get("failed"), started.get("msg")
    yield lab
    ctl(lab, "quit -t 0")


@pytest.fixture
def procs():
    """Sleeping processes for the stand-in to count as clients; whatever survives the test is killed after it."""
    made = []

    def make(code="import time; time.sleep(120)"):
        proc = subprocess.Popen([sys.executable, "-c", code])
        made.append(proc)
        return proc
    yield make
    for proc in made:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
def faulted(lab, procs):
    """Server A (this user's) with clients a (it faults) and b; server B (another user's) with client c; d unattached."""
    a, b, c, d = procs(), procs(), procs(), procs()
    for proc in (a, b):
        assert ctl(lab, "standin_attach_client %d" % proc.pid) == ""
    assert ctl(lab, "standin_attach_client %d 0 %d" % (c.pid, OTHER_UID)) == ""
    assert ctl(lab, "standin_fault %d" % a.pid) == ""
    status = servers(lab)
    fault = [pid for pid, s in status.items() if s == "FAULT"]
    assert len(status) == 2 and len(fault) == 1, status
    other = [pid for pid in status if pid != fault[0]][0]
    return {"a": a, "b": b, "c": c, "d": d, "server": fault[0], "other": other}


def test_end_clients_ends_the_fault_servers_clients_only(tmp_path, lab, faulted, procs):
    result = module(tmp_path, diff=True, fault_recovery="end_clients", **lab)
    assert not result.get("failed"), result.get("msg")
    time.sleep(0.2)
    assert not alive(faulted["a"]) and not alive(faulted["b"])
    assert alive(faulted["c"]) and alive(faulted["d"])  # another server's client, and a process of no server
    assert result["changed"]
    recovery = result["fault_recovery"]
    assert recovery["faulted_servers"] == [faulted["server"]]
    assert recovery["ended"] == sorted([faulted["a"].pid, faulted["b"].pid]) == recovery["would_end"]
    assert recovery["killed"] == [] and recovery["refused"] == []
    assert recovery["status_before"][str(faulted["server"])] == "FAULT"
    assert recovery["status_after"][str(faulted["server"])] == "ACTIVE"
    assert servers(lab) == {faulted["server"]: "ACTIVE", faulted["other"]: "ACTIVE"}  # same PID, back by itself
    assert result["health"]["healthy"] and result["health"]["faulted_servers"] == []
    assert result["diff"]["before"]["servers"][str(faulted["server"])] == "FAULT"
    assert result["diff"]["after"]["servers"][str(faulted["server"])] == "ACTIVE"
    assert ctl(lab, "standin_attach_client %d" % procs().pid) == ""  # a new client is served again
    again = module(tmp_path, fault_recovery="end_clients", **lab)
    assert not again.get("failed") and not again["changed"]  # no FAULT: nothing to do
    assert alive(faulted["c"]) and alive(faulted["d"])


def test_check_mode_predicts_and_kills_nothing(tmp_path, lab, faulted):
    result = module(tmp_path, check=True, diff=True, fault_recovery="end_clients", **lab)
    assert not result.get("failed"), result.get("msg")
    assert result["changed"]
    assert result["fault_recovery"]["would_end"] == sorted([faulted["a"].pid, faulted["b"].pid])
    assert result["fault_recovery"]["ended"] == []
    assert result["diff"]["before"]["servers"][str(faulted["server"])] == "FAULT"
    assert result["diff"]["after"]["servers"][str(faulted["server"])] == "ACTIVE"
    time.sleep(0.3)
    assert all(alive(faulted[k]) for k in "abcd")
    assert servers(lab)[faulted["server"]] == "FAULT"


def test_fault_recovery_none_reports_and_says_what_to_do(tmp_path, lab, faulted):
    result = module(tmp_path, **lab)
    assert not result.get("failed"), result.get("msg")
    assert not result["changed"]
    assert result["fault_recovery"]["mode"] == "none"
    assert result["fault_recovery"]["faulted_servers"] == [faulted["server"]]
    assert not result["health"]["healthy"]
    assert [p["kind"] for p in result["health"]["problems"]] == ["server_fault"]
    warning = " ".join(w if isinstance(w, str) else w.get("msg", str(w)) for w in result.get("warnings", []))
    assert "FAULT" in warning and "fault_recovery=end_clients" in warning and "terminate_client" in warning
    time.sleep(0.3)
    assert all(alive(faulted[k]) for k in "abcd")
    assert servers(lab)[faulted["server"]] == "FAULT"


def test_a_client_that_ignores_sigterm_is_killed(tmp_path, lab, procs):
    stubborn = procs("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)")
    time.sleep(0.3)  # its handler is set
    assert ctl(lab, "standin_attach_client %d" % stubborn.pid) == ""
    ctl(lab, "standin_fault %d" % stubborn.pid)
    result = module(tmp_path, fault_recovery="end_clients", **lab)
    assert not result.get("failed"), result.get("msg")
    assert stubborn.wait(timeout=5) == -signal.SIGKILL
    assert result["fault_recovery"]["killed"] == [stubborn.pid]
    assert list(servers(lab).values()) == ["ACTIVE"]


@pytest.mark.skipif(not shutil.which("unshare"), reason="needs unshare(1) to make a client in another PID namespace")
def test_a_client_in_another_pid_namespace_is_not_killed(tmp_path, lab, procs):
    """A pod's client: its PID as listed here is not proven to be the process, so it is reported, never signalled."""
    pod = subprocess.Popen(["unshare", "--pid", "--fork", sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        deadline = time.time() + 5
        child = None
        while child is None and time.time() < deadline:
            try:
                with open("/proc/%d/task/%d/children" % (pod.pid, pod.pid)) as handle:
                    child = int(handle.read().split()[0])
            except (OSError, IndexError, ValueError):
                time.sleep(0.05)
        if child is None or os.readlink("/proc/%d/ns/pid" % child) == os.readlink("/proc/self/ns/pid"):
            pytest.skip("unshare --pid did not make a PID namespace here")
        local = procs()
        for pid in (local.pid, child):
            assert ctl(lab, "standin_attach_client %d" % pid) == ""
        ctl(lab, "standin_fault %d" % local.pid)
        result = module(tmp_path, fault_recovery="end_clients", **lab)
        assert result.get("failed") and "still in FAULT" in result["msg"]
        assert "PID namespace" in result["msg"] and "end that pod" in result["msg"]
        assert result["fault_recovery"]["ended"] == [local.pid]
        assert [r["pid"] for r in result["fault_recovery"]["refused"]] == [child]
        assert local.wait(timeout=5) is not None
        assert os.path.exists("/proc/%d" % child) and pod.poll() is None  # the pod's client lives
        assert list(servers(lab).values()) == ["FAULT"]
    finally:
        pod.kill()
        pod.wait()


def test_bad_input_is_refused_before_anything_changes(tmp_path, lab, faulted):
    for check in (True, False):
        bogus = module(tmp_path, check=check, fault_recovery="kill_everything", **lab)
        assert bogus.get("failed") and "fault_recovery" in bogus["msg"]
        stopped = module(tmp_path, check=check, state="stopped", force=True, fault_recovery="end_clients", **lab)
        assert stopped.get("failed") and "needs state started or restarted" in stopped["msg"]
        assert "nothing was changed" in stopped["msg"]
    time.sleep(0.3)
    assert all(alive(faulted[k]) for k in "abcd")
    assert servers(lab)[faulted["server"]] == "FAULT"  # the daemon still runs, untouched
