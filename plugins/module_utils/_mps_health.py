# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Is MPS healthy on this host, and if not, what happened and what to do: one judgement for every reader.

This is a private module_utils of gpulab.mps: its API may change without notice. STANDARD LIBRARY ONLY, and it
imports nothing of the collection but _mps_output's constants: mps_info, mps_daemon, the fleet's health gate,
the dial-tone and the metrics collector all call assess(), so that they say the same thing.

What MPS does on this driver (H200, driver 580.159.04; docs/evidence/2026-12-04-h200-fault.md):
- A client's fatal GPU error (an out-of-bounds write) puts its server in FAULT and EVERY client of that server gets
  the error (cudaErrorIllegalAddress), the healthy ones too. While any of those clients lives the server stays in
  FAULT and refuses new clients at once (cudaErrorMpsServerNotReady). When the last one exits, the server is
  ACTIVE again, same PID, and new clients run. Servers of other users (other servers) are not touched.
- `terminate_client` on a server in FAULT did not end a client that was not calling CUDA, and the control daemon
  then answered NOTHING (every command timed out) until those clients exited by themselves. So recovery is ending
  those clients' processes, never terminate_client.
- A server killed (SIGKILL) under a client: the client gets cudaErrorMpsRpcFailure, the daemon lists no server,
  logs "Server N exited with status 0" with no shutdown asked, and the next client gets a new server.
- The control daemon killed: its server and clients go with it (cudaErrorMpsRpcFailure), the pid file, the log fifo
  and the sockets stay, and the CLI says "Cannot find MPS control daemon process".
"""

from __future__ import annotations

# The states of the control daemon, as assess() names them.
RUNNING = "running"
STOPPED = "stopped"          # not running, and it left nothing behind: stopped on purpose
DIED = "died"                # not running, but its pid file or log fifo is still there: it crashed or was killed
UNRESPONSIVE = "unresponsive"  # it does not answer within the timeout

FAULT = "FAULT"

EVIDENCE = "docs/evidence/2026-12-04-h200-fault.md"


def _problem(kind, message, action, server=None, clients=None):
    return {"kind": kind, "server": server, "clients": list(clients or []), "message": message, "action": action}


def assess(state, control_log=None, server_log=None, expect_running=True, unresponsive=None):
    """Judge one snapshot of a control daemon (_mps_control.MpsControl.snapshot).

    state: the snapshot (running, pid, servers with status and clients, pipe_directory); it may also carry
      "leftovers" ({"pid_file": bool, "log_fifo": bool}: what a daemon that is not running left in its pipe directory).
    control_log: _mps_output.parse_control_log of the daemon's control.log (servers that exited unasked).
    server_log: _mps_output.parse_server_log of server.log (the faults each server logged).
    expect_running: whether a daemon ought to run here (False after a teardown: a stopped daemon is then healthy).
    unresponsive: the error text when the daemon did not answer within the timeout (the snapshot is then partial).

    Returns {"healthy": bool, "daemon": running|stopped|died|unresponsive, "faulted_servers": [pid],
    "problems": [{"kind", "server", "clients", "message", "action"}]}, problems in the order a user should read them.
    """
    problems = []
    pipe = state.get("pipe_directory")
    faulted = []
    if unresponsive:
        daemon = UNRESPONSIVE
        problems.append(_problem(
            "daemon_unresponsive",
            "the MPS control daemon of %s does not answer (%s). On driver 580 this was seen after terminate_client "
            "on a server in FAULT: the daemon answered nothing until that server's clients exited" % (pipe, unresponsive),
            "end the clients of the server in FAULT (mps_daemon fault_recovery=end_clients, or by hand); if nothing "
            "is in FAULT, restart the daemon (mps_daemon state=restarted) and read control.log"))
    elif state.get("running"):
        daemon = RUNNING
    else:
        leftovers = state.get("leftovers") or {}
        daemon = DIED if (leftovers.get("pid_file") or leftovers.get("log_fifo")) else STOPPED
        if daemon == DIED:
            problems.append(_problem(
                "daemon_died",
                "the MPS control daemon of %s is not running but left its pid file or log fifo behind: it crashed "
                "or was killed, and its servers and their clients went with it" % pipe,
                "start it again (mps_daemon state=started, or systemctl restart of its unit) and read control.log "
                "for the cause"))
        elif expect_running:
            problems.append(_problem("daemon_not_running", "no MPS control daemon runs on %s" % pipe,
                                     "start it (mps_daemon state=started or the mps_host role)"))
    for server in state.get("servers") or []:
        if server.get("status") == FAULT:
            faulted.append(server["pid"])
            logged = ((server_log or {}).get(server["pid"]) or {}).get("faults") or []
            noticed = (" (first noticed by client %s at %s)" % (logged[-1]["noticed_by"], logged[-1]["time"])
                       if logged and logged[-1].get("noticed_by") else "")
            problems.append(_problem(
                "server_fault",
                "MPS server %d is in FAULT%s: a client hit a fatal GPU error (for example an out-of-bounds memory "
                "access), every client of this server got the error, and new clients are refused "
                "(cudaErrorMpsServerNotReady) until all of its clients %s have exited" % (
                    server["pid"], noticed, server.get("clients") or []),
                "end those client processes (their CUDA contexts are already lost): mps_daemon "
                "fault_recovery=end_clients does it for clients on this host; the server is then ACTIVE again by "
                "itself. Do not use terminate_client: it left the daemon unresponsive (%s)" % EVIDENCE,
                server=server["pid"], clients=server.get("clients")))
    if control_log and daemon in (RUNNING, UNRESPONSIVE) and control_log.get("daemon_pid") in (None, state.get("pid")):
        for pid, server in sorted((control_log.get("servers") or {}).items()):
            if server.get("exited") and server.get("requested") is False:
                problems.append(_problem(
                    "server_exited",
                    "MPS server %d exited at %s without a shutdown being asked (status %s): it crashed or was killed, "
                    "and its clients got cudaErrorMpsRpcFailure" % (pid, server["exited"], server.get("status")),
                    "the next client gets a new server by itself; find out what killed it (dmesg, the OOM killer, "
                    "server.log) and restart the clients that failed",
                    server=pid))
        for pid, client in sorted((control_log.get("waiting") or {}).items()):
            problems.append(_problem(
                "client_waiting",
                "client %d of uid %s has waited since %s for MPS server %s of another user to finish: without -M the "
                "daemon serves one user at a time, and a second user's client waits, silently, until every client of "
                "the first user has exited" % (pid, client.get("uid"), client.get("since"), client.get("blocked_by")),
                "run the daemon as a multi-user server (mps_host_multiuser_server true: -M) so that every user's "
                "clients run at once, or let the other user's clients finish",
                server=client.get("blocked_by"), clients=[pid]))
    # A server that exited unasked is history, not a present fault: the daemon serves new clients. A client waiting
    # for another user's server is how a daemon without -M works. Both are reported, and the health gate sees them,
    # but neither alone makes the host unhealthy.
    blocking = [p for p in problems if p["kind"] not in ("server_exited", "client_waiting")]
    if not expect_running and daemon == STOPPED:
        blocking = []
    return {"healthy": not blocking, "daemon": daemon, "faulted_servers": faulted, "problems": problems}


def summary(health):
    """One line for a report or a failed assert: 'healthy', or each problem, what happened and what to do."""
    if not health["problems"]:
        return "healthy"
    return "; ".join("%s: %s. What to do: %s" % (p["kind"], p["message"], p["action"]) for p in health["problems"])
