# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Recovery of MPS servers in FAULT: end the client processes whose CUDA contexts the fault already destroyed.

This is a private module_utils of gpulab.mps: its API may change without notice. STANDARD LIBRARY ONLY (it imports
only the collection's own stdlib-only helpers): mps_daemon (fault_recovery=end_clients) and the GPU check
tests/gpu/fault_recovery_check.py both call recover(), the second without Ansible.

What the record supports (H200, driver 580.159.04, docs/evidence/2026-12-04-h200/fault/, summarised in
_mps_health): every client of a server in FAULT got the sticky error, and the server is ACTIVE again (same PID) as
soon as the last of them exits. So ending those processes is the recovery, and it costs nothing that was not lost
already. `terminate_client <server> <client>` is NOT used: on the H200 it did not end a client that was sleeping,
and the control daemon then answered no command at all for ~55 s, until the clients exited by themselves
(sticky.jsonl). A recovery that hangs the daemon for every other user is worse than none.

A PID is acted on only when it provably is a client of the faulted server, here:
- get_client_list of that server names it (the CLI's list of PIDs: nobody's text in it);
- EVERY `ps` row that names the PID says it is a client of that server, in this host's PID namespace: `ps` prints
  each client's argv[0] raw, so a client can print rows of its own; a PID named by a row that disagrees is refused
  (and a PID of no row at all, whose namespace is then unknown);
- the process lives in this PID namespace by the kernel's word too (/proc/PID/ns/pid): a client in a pod or a
  container is listed under a PID that this host may give another process, so it is reported, with the advice to end
  that pod, never signalled;
- it belongs to the user that server serves (the server process's owner), unless the daemon is a multi-user server
  (-M: one root server serves every user);
- it is alive, and its start time is the same when it is signalled as when it was read (a pidfd pins the process
  between the check and the signal where the kernel has them; else the check is repeated just before kill()).
Clients of servers that are not in FAULT are never looked at.
"""

from __future__ import annotations

import errno
import os
import signal
import time

from ansible_collections.gpulab.mps.plugins.module_utils._mps_health import FAULT
from ansible_collections.gpulab.mps.plugins.module_utils._trust import pid_namespace, process_start

# Seconds a client gets to exit after SIGTERM before SIGKILL, and then to be gone after SIGKILL.
TERM_WAIT = 10
KILL_WAIT = 5


def own_pid_namespace():
    """The inode of this process's PID namespace, as the `ps` NAMESPACE column prints it ("4026531836"), or None."""
    return pid_namespace("self")


# --- the decision (pure but for reading /proc through `starts` and `namespaces`) -----------------------------------

def plan(state, namespace, starts=process_start, namespaces=pid_namespace, multiuser=False):
    """What recovery would do for the snapshot `state` (_mps_control.MpsControl.snapshot): decided, nothing done.

    namespace: own_pid_namespace(). starts: pid -> process_start(pid) ((state, start, uid) or None); namespaces:
    pid -> its PID namespace by /proc; multiuser: the daemon is a multi-user server (-M).
    Returns {"servers": [FAULT server pids], "end": [{pid, server, start, command}],
    "refused": [{pid, server, namespace, reason}], "gone": [{pid, server}]}.
    """
    rows = {}
    for row in state.get("clients") or []:
        rows.setdefault(row["pid"], []).append(row)
    result = {"servers": [], "end": [], "refused": [], "gone": []}

    def refuse(pid, server, namespace_seen, reason):
        result["refused"].append({"pid": pid, "server": server, "namespace": namespace_seen, "reason": reason})

    for server in state.get("servers") or []:
        if server.get("status") != FAULT:
            continue
        spid = server["pid"]
        result["servers"].append(spid)
        server_seen = starts(spid)
        for pid in server.get("clients") or []:
            named = rows.get(pid) or []
            seen = starts(pid)
            if not seen or seen[0] == "Z":
                result["gone"].append({"pid": pid, "server": spid})
                continue
            if not named:
                # get_client_list names it, ps does not: its namespace is unknown, so it is not proven to be ours.
                refuse(pid, spid, None, "client %d of MPS server %d is not in the daemon's ps table, so its PID "
                                        "namespace is unknown: it is not proven to be process %d of this host; end it "
                                        "by hand if it is" % (pid, spid, pid))
                continue
            command = named[0].get("command") or "?"
            others = sorted(set(r["server"] for r in named if r["server"] != spid))
            if others:
                refuse(pid, spid, None, "PID %d is named by ps rows of MPS server%s %s too, not only of %d: its rows "
                                        "disagree (a client's process name can print rows), so it is not ended" % (
                                            pid, "" if len(others) == 1 else "s", ", ".join(map(str, others)), spid))
                continue
            listed = sorted(set(str(r.get("namespace")) for r in named))
            kernel = namespaces(pid)
            if namespace is None or listed != [str(namespace)] or kernel != str(namespace):
                refuse(pid, spid, listed[0] if len(listed) == 1 else listed,
                       "client %d (%s) of MPS server %d runs in PID namespace %s (the kernel says %s), not this "
                       "host's (%s): a pod or a container, whose PID here may be another process; end that pod or "
                       "container (kubectl delete pod ...), and the server is ACTIVE again once its clients are gone"
                       % (pid, command, spid, "/".join(listed), kernel, namespace))
                continue
            if not multiuser and (not server_seen or seen[2] != server_seen[2]):
                refuse(pid, spid, listed[0], "process %d belongs to uid %d, but MPS server %d serves uid %s: a "
                                             "server serves one user's clients, so %d is not ended" % (
                                                 pid, seen[2], spid, server_seen[2] if server_seen else "?", pid))
                continue
            result["end"].append({"pid": pid, "server": spid, "start": seen[1], "command": command})
    return result


# --- the action ---------------------------------------------------------------------------------------------------

def _same(pid, start):
    seen = process_start(pid)
    return bool(seen) and seen[0] != "Z" and seen[1] == start


def _signal(target, signum):
    """Send signum to target's process if it still is that process (same start time). True when sent."""
    pid, start = target["pid"], target["start"]
    pidfd = None
    if hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal"):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = None  # gone, or a kernel without pidfds: fall back to the check just before kill()
    try:
        # With a pidfd open, the check below is about the very process the signal goes to: a PID reused after the
        # check cannot receive it.
        if not _same(pid, start):
            return False
        try:
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, signum)
            else:
                os.kill(pid, signum)
        except OSError as error:
            if error.errno == errno.ESRCH:
                return False
            raise
        return True
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _wait_gone(targets, seconds):
    deadline = time.time() + seconds
    while True:
        alive = [t for t in targets if _same(t["pid"], t["start"])]
        if not alive or time.time() >= deadline:
            return alive
        time.sleep(0.1)


def end_processes(targets, term_wait=TERM_WAIT, kill_wait=KILL_WAIT):
    """SIGTERM each target (still the same process), wait up to term_wait s, SIGKILL who is left, wait kill_wait s.

    Returns {"ended": [pid], "killed": [pid] (needed SIGKILL), "vanished": [pid] (gone or another process before
    the signal: not signalled), "survived": [pid], "errors": [{pid, error}]}."""
    out = {"ended": [], "killed": [], "vanished": [], "survived": [], "errors": []}
    signalled = []
    for target in targets:
        try:
            if _signal(target, signal.SIGTERM):
                signalled.append(target)
            else:
                out["vanished"].append(target["pid"])
        except OSError as error:  # EPERM: not ours to end (a non-root run, another user's client)
            out["errors"].append({"pid": target["pid"], "error": os.strerror(error.errno)})
    left = _wait_gone(signalled, term_wait)
    for target in left:
        try:
            if _signal(target, signal.SIGKILL):
                out["killed"].append(target["pid"])
        except OSError as error:
            out["errors"].append({"pid": target["pid"], "error": os.strerror(error.errno)})
    survivors = _wait_gone(left, kill_wait) if left else []
    out["survived"] = sorted(t["pid"] for t in survivors)
    out["ended"] = sorted(t["pid"] for t in signalled if t not in survivors)
    return out


def wait_recovered(control, servers, seconds, interval=0.2):
    """Poll get_server_status of each server until none is in FAULT or seconds pass: {pid: status} last read.

    A server that left the list meanwhile is "GONE" (the next client gets a new one)."""
    deadline = time.time() + seconds
    while True:
        listed = set(control.server_list())
        status = dict((pid, control.server_status(pid) if pid in listed else "GONE") for pid in servers)
        if all(s != FAULT for s in status.values()) or time.time() >= deadline:
            return status
        time.sleep(interval)


def recover(control, state, check_mode=False, timeout=30, term_wait=TERM_WAIT, kill_wait=KILL_WAIT, namespace=None,
            multiuser=None):
    """End the clients of the servers in FAULT that plan() proves are ours, then wait until the servers are not.

    control: an _mps_control.MpsControl; state: its snapshot, just read. In check mode nothing is signalled and the
    result is the prediction. Returns the plan's keys plus "would_end" (pids), "signals" (end_processes' result, or
    None in check mode) and "status_before"/"status_after" ({server pid: status}; after is predicted in check mode).
    """
    namespace = namespace if namespace is not None else own_pid_namespace()
    if multiuser is None:
        multiuser = bool(state.get("pid")) and control.daemon_options(state["pid"])["multiuser"]
    decided = plan(state, namespace, multiuser=multiuser)
    status_before = dict((s["pid"], s.get("status")) for s in state.get("servers") or [])
    result = dict(decided, would_end=[t["pid"] for t in decided["end"]], signals=None,
                  status_before=status_before, status_after=dict(status_before))
    if not decided["servers"]:
        return result
    blocked = set(r["server"] for r in decided["refused"])
    if check_mode:
        for pid in decided["servers"]:
            result["status_after"][pid] = FAULT if pid in blocked else "ACTIVE"
        return result
    result["signals"] = end_processes(decided["end"], term_wait, kill_wait)
    stuck = blocked | set(t["server"] for t in decided["end"]
                          if t["pid"] in result["signals"]["survived"]
                          or t["pid"] in [e["pid"] for e in result["signals"]["errors"]])
    # A server still holding clients that were not ended stays in FAULT: one quick read, no waiting for it.
    waiting = [pid for pid in decided["servers"] if pid not in stuck]
    status = wait_recovered(control, waiting, timeout) if waiting else {}
    if stuck:
        status.update(wait_recovered(control, sorted(stuck), 0))
    result["status_after"].update(status)
    return result


def describe(result, check_mode=False):
    """One sentence per server: what was done and what is left to do (for a warning or a failure message)."""
    lines = []
    signals = result.get("signals") or {}
    for server in result["servers"]:
        ended = [t["pid"] for t in result["end"] if t["server"] == server
                 and (check_mode or t["pid"] in signals.get("ended", []) + signals.get("killed", []))]
        refused = [r for r in result["refused"] if r["server"] == server]
        after = result["status_after"].get(server)
        text = "MPS server %d (FAULT): " % server
        text += ("%s client%s %s" % ("would end" if check_mode else "ended", "" if len(ended) == 1 else "s",
                                     ", ".join(map(str, ended)))
                 if ended else "no client of this host to end")
        text += "; %s %s" % ("would then be" if check_mode else "now", after)
        if refused:
            text += "; not ended: " + "; ".join(r["reason"] for r in refused)
        lines.append(text)
    return ". ".join(lines)
