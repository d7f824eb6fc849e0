# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The state of one MPS control daemon, brought to what its plan asks: the logic of gpulab.mps.mps_daemon.

This is a private module_utils of gpulab.mps: its API may change without notice. STANDARD LIBRARY ONLY, and no
Ansible: the module mps_daemon is a thin shell around DaemonState (as community.docker keeps its container logic in
module_utils), and the unit's entry point (_mps_cli) applies and reads back the defaults with the same code.

Everything goes through the plan's client (_mps_control.MpsControl.from_plan): what the daemon is started with, which
defaults it gets, in exact bytes, read back, recorded; which servers are restarted; which clients of a server in FAULT
are ended (_mps_recovery). Failures raise DaemonError (the message and the fields a module returns), warnings are
collected in `warnings`; nothing here prints or exits.
"""

from __future__ import annotations

import os

from ansible_collections.gpulab.mps.plugins.module_utils._command import MAX_TIMEOUT
from ansible_collections.gpulab.mps.plugins.module_utils._mps_control import (
    ControlHangs, DaemonNotRunning, MpsControl, MpsControlError, pid_alive)
from ansible_collections.gpulab.mps.plugins.module_utils._mps_output import (
    ALREADY_RUNNING, DAEMON_FILES, LOG_FIFO, PID_FILE)
from ansible_collections.gpulab.mps.plugins.module_utils._mps_recovery import describe as describe_recovery
from ansible_collections.gpulab.mps.plugins.module_utils._mps_recovery import recover
from ansible_collections.gpulab.mps.plugins.module_utils._sizes import mps_size, readback_matches
from ansible_collections.gpulab.mps.plugins.module_utils._trust import (
    Lock, TrustError, directory_problem, ensure_directory, parse_mode, remove_owned)

STATES = ("started", "stopped", "restarted")


class DaemonError(Exception):
    """The task cannot go on: the message (what, where, what to do) and the fields a module returns with it."""

    def __init__(self, msg, **details):
        super(DaemonError, self).__init__(msg)
        self.details = details


def control_failure(error, doing, **details):
    """DaemonError of a failed CLI call: what was being done, what the CLI said, and its cmd/rc/stdout/stderr."""
    details.update(error.details())
    return DaemonError("%s: %s" % (doing, error), **details)


# --- decisions (pure: nothing here touches the host) ------------------------------------------------

def pinned_in_sync(size_bytes, shown):
    """Whether the daemon's default for one device already is size_bytes.

    `shown` comes from the snapshot: the CLI's read-back (rounded down to whole units), replaced by
    the exact value when this collection recorded setting it on this daemon. A rounded read-back that
    cannot prove the value (1G for 1536M) counts as out of sync, and the value is set again.
    """
    return (shown or "").strip() == mps_size(size_bytes)


def server_matches(server, percentage, limits):
    """Whether a running server holds the desired values (None where nothing is asked)."""
    logged = server.get("logged") or {}
    if percentage is not None and server.get("active_thread_percentage") is not None \
            and abs(server["active_thread_percentage"] - percentage) > 0.05:
        return False
    for ordinal, size_bytes in limits.items():
        exact = (logged.get("pinned_memory_limit") or {}).get(str(ordinal))
        if exact is not None:
            if exact != size_bytes:
                return False
        elif not readback_matches(size_bytes, server.get("pinned_memory_limit", {}).get(str(ordinal))):
            return False
    return True


def server_statuses(servers):
    """{pid (a string): status} of a snapshot's servers."""
    return dict((str(s["pid"]), s["status"]) for s in servers)


def describe(running, defaults, statuses=None):
    """The state shown in --diff; statuses: server_statuses() of the servers."""
    return {"state": "running" if running else "stopped",
            "default_active_thread_percentage": defaults.get("active_thread_percentage"),
            "default_pinned_memory_limit": dict(defaults.get("pinned_memory_limit") or {}),
            "servers": dict(statuses or {})}


def option_errors(state, timeout, fault_recovery, directory_mode):
    """The options' own errors, as sentences, before anything is read; returns (errors, directory mode)."""
    errors = []
    if state not in STATES:
        errors.append("state must be one of %s, got %r" % (", ".join(STATES), state))
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= MAX_TIMEOUT:
        errors.append("timeout must be a whole number of seconds from 1 to %d, got %r" % (MAX_TIMEOUT, timeout))
    if fault_recovery != "none" and state == "stopped":
        errors.append("fault_recovery=%s needs state started or restarted: a stopped daemon has no server to "
                      "recover" % fault_recovery)
    mode = None
    try:
        mode = parse_mode(directory_mode)
        if mode & 0o022:
            errors.append("directory_mode %04o lets group or others write in the pipe directory, where they could "
                          "replace the daemon's sockets: use 0755 or 0711" % mode)
    except ValueError as error:
        errors.append("directory_mode must be a mode such as \"0755\": %s" % error)
    return errors, mode


# --- the daemon ---------------------------------------------------------------------------------------------------

class DaemonState(object):
    """Brings the daemon of `plan` to `state` (started, stopped, restarted), applies and reads back its defaults.

    plan: the host's plan (preflight_mps_plan) or _plan.local_plan's. check_mode: decide and report, change nothing.
    run() returns (before, after, started_fresh); result() the module's result."""

    def __init__(self, plan, state="started", check_mode=False, force=False, timeout=30, apply_to_running="report",
                 fault_recovery="none", directory_mode="0755", defaults_applied_at_start=None):
        errors, self.dir_mode = option_errors(state, timeout, fault_recovery, directory_mode)
        self.plan = plan
        self.state = state
        self.check_mode = check_mode
        self.force = force
        self.timeout = timeout
        self.apply_to_running = apply_to_running
        self.fault_recovery = fault_recovery
        self.uid = os.geteuid()
        daemon = plan["daemon"]
        self.pipe_directory, self.log_directory = plan["pipe_directory"], plan["log_directory"]
        self.state_directory = plan["state_directory"]
        if not errors:
            for option in ("pipe_directory", "log_directory", "state_directory"):
                problem = directory_problem(plan[option], self.uid, creatable=True)
                if problem:
                    errors.append("%s: %s" % (option, problem))
        if errors:
            raise DaemonError("Invalid MPS settings, nothing was changed: " + "; ".join(errors), errors=errors)
        self.multiuser = bool(daemon.get("multiuser_server"))
        self.percentage = daemon.get("active_thread_percentage")
        self.limits = dict((int(o), int(b)) for o, b in (daemon.get("pinned_memory_limit") or {}).items())
        self.visible_uuids = daemon.get("visible_devices")
        self.devices = dict(daemon.get("devices") or {}) or None
        # The unit's drop-in applies these very defaults at every start: the record then holds for a restarted daemon.
        self.applied_at_start = daemon.get("service_manager") == "systemd" if defaults_applied_at_start is None \
            else bool(defaults_applied_at_start)
        self.control = MpsControl.from_plan(plan, timeout=timeout, trusted_uids=[self.uid])
        self.control.applied_at_start = self.applied_at_start
        self.control.requested_limits = self.limits
        self.changed = False
        self.warnings = []
        self.restarted_servers = []
        self.removed_sockets = []
        self.recovery = None

    # Helpers --------------------------------------------------------------------------------------
    def ordinals(self):
        return sorted(self.limits) or [0]

    def snapshot(self):
        try:
            return self.control.snapshot(self.ordinals())
        except MpsControlError as error:
            raise control_failure(error, "Cannot read the MPS state in %s" % self.pipe_directory)

    def ensure_directory(self, option, path):
        if os.path.isdir(path):
            return  # trusted: checked when this object was made
        self.changed = True
        if not self.check_mode:
            try:
                ensure_directory(path, self.uid, self.dir_mode)
            except TrustError as error:
                # The first change of a start: when it fails, nothing has been changed yet.
                raise DaemonError("%s %s cannot be used: %s" % (option, path, error))

    # Stop -----------------------------------------------------------------------------------------
    def stop(self, state):
        if not state["running"]:
            return
        clients = state["clients"]
        if clients and not self.force:
            listing = ", ".join("%d (%s, server %d)" % (c["pid"], c["command"] or "?", c["server"]) for c in clients)
            raise DaemonError(
                "Refusing to stop the MPS control daemon in %s: %d client%s attached: %s. Stop them first, or set "
                "force=true to shut their servers down (their work is lost)." % (
                    self.pipe_directory, len(clients), "" if len(clients) == 1 else "s", listing), clients=clients)
        self.changed = True
        if self.check_mode:
            return
        pid = state["pid"]
        # force decides, not the snapshot: a client that attached since is waited for unless force says otherwise.
        try:
            self.control.quit(force_after=self.timeout if self.force else None)
        except DaemonNotRunning:
            pass  # it died on its own meanwhile: stopped is what was asked
        except MpsControlError as error:
            raise control_failure(error, "Cannot stop the MPS control daemon in %s" % self.pipe_directory)
        gone = self.control.wait(lambda: not self.control.is_running() and not (pid and pid_alive(pid)),
                                 self.timeout + 5)
        if not gone:
            waiting = ""
            try:
                attached = self.control.ps()
                if attached:
                    pids = ", ".join(str(c["pid"]) for c in attached)
                    waiting = (" It is waiting for client%s %s, which attached meanwhile: it exits when they finish, "
                               "or stop with force=true." % ("" if len(attached) == 1 else "s", pids))
            except MpsControlError:
                pass
            raise DaemonError("The MPS control daemon in %s (pid %s) did not exit within %d s after quit.%s %s" % (
                self.pipe_directory, pid, self.timeout + 5, waiting, self.control.log_tail()))

    def clean_leftovers(self):
        """Remove what a daemon that is gone left behind: its sockets, fifo and pid file, when they are ours."""
        if self.control.daemon_pid() is not None or not os.path.isdir(self.pipe_directory):
            return
        entries = self.control.pipe_entries()
        present = entries["sockets"] + ([LOG_FIFO] if entries["log_fifo"] else []) + \
            ([PID_FILE] if entries["pid_file"] else [])
        kinds = dict((name, DAEMON_FILES[name]) for name in present)
        if not kinds:
            return
        if self.check_mode:
            self.removed_sockets = sorted(kinds)
            self.changed = True
            return
        self.removed_sockets = remove_owned(self.pipe_directory, kinds, self.uid)
        self.changed = self.changed or bool(self.removed_sockets)

    # Start ----------------------------------------------------------------------------------------
    def start(self):
        self.ensure_directory("pipe_directory", self.pipe_directory)
        self.ensure_directory("log_directory", self.log_directory)
        self.changed = True
        if self.check_mode:
            return
        try:
            rc, out, err = self.control.start_daemon(self.multiuser)
        except MpsControlError as error:
            raise control_failure(error, "MPS control daemon in %s did not start" % self.pipe_directory)
        if rc != 0:
            hint = " (a daemon process holds the pipe directory but does not answer)" if ALREADY_RUNNING in out + err \
                else ""
            raise DaemonError("MPS control daemon in %s did not start%s: %s" % (
                self.pipe_directory, hint, (out + err).strip() or self.control.log_tail()),
                cmd=self.control.start_argv(self.multiuser), rc=rc, stdout=out, stderr=err)
        if not self.control.wait(self.control.is_running, self.timeout):
            raise DaemonError("MPS control daemon in %s did not answer within %d s: %s; is the NVIDIA driver loaded?"
                              % (self.pipe_directory, self.timeout, self.control.log_tail() or "control.log is empty"))

    def check_started_as_planned(self, state):
        """Warn when the running daemon was started with another -M or other devices than planned: both hold until
        it restarts. Read from the daemon's own process (root's), never from a file another user can write."""
        if not state["pid"]:
            return
        running = self.control.daemon_options(state["pid"])
        if running["multiuser"] != self.multiuser:
            self.warnings.append("The running MPS control daemon was started %s -M (multi-user server), not %s; it "
                                 "keeps that until it restarts (state=restarted, when no client runs)." % (
                                     "with" if running["multiuser"] else "without",
                                     "with" if self.multiuser else "without"))
        wanted = ",".join(self.visible_uuids) if self.visible_uuids else None
        if running["visible_devices"] != wanted:
            self.warnings.append("The running MPS control daemon has CUDA_VISIBLE_DEVICES=%r, not %r (the plan's); it "
                                 "keeps its devices until it restarts (state=restarted)." % (
                                     running["visible_devices"], wanted))

    # Defaults -------------------------------------------------------------------------------------
    def apply_defaults(self, state):
        """Set what differs, then read it back. `state` is the snapshot of a running daemon, or None
        when the daemon was (or, in check mode, would be) just started with no defaults."""
        current = state["defaults"] if state else {"active_thread_percentage": None, "pinned_memory_limit": {}}
        set_percentage = self.percentage is not None and (
            current["active_thread_percentage"] is None
            or abs(current["active_thread_percentage"] - self.percentage) > 0.05)
        set_limits = dict((o, b) for o, b in self.limits.items()
                          if not pinned_in_sync(b, current["pinned_memory_limit"].get(str(o))))
        if not set_percentage and not set_limits:
            if state and self.limits and not self.check_mode:
                self.keep_record(state)
            return
        self.changed = True
        if self.check_mode:
            return
        try:
            if set_percentage:
                echoed = self.control.set_default_active_thread_percentage(self.percentage)
                if abs(echoed - self.percentage) > 0.05:
                    raise DaemonError("MPS kept default active thread percentage %g after setting %g" % (
                        echoed, self.percentage))
            for ordinal, size_bytes in sorted(set_limits.items()):
                self.control.set_default_pinned_limit(ordinal, mps_size(size_bytes))
                shown = self.control.default_pinned_limit(ordinal)
                if not readback_matches(size_bytes, shown):
                    raise DaemonError("MPS did not take default pinned memory limit %s for device %d: it reads back "
                                      "%r" % (mps_size(size_bytes), ordinal, shown))
        except MpsControlError as error:
            raise control_failure(error, "Cannot set the MPS defaults in %s" % self.pipe_directory)
        self.keep_record(None)

    def keep_record(self, state):
        """Record the exact limits in force on this daemon, when the record does not already say so."""
        pid = state["pid"] if state else self.control.daemon_pid()
        identity = self.control.daemon_identity(pid)
        record = self.control.record
        if self.control.recorded_limits(identity) == self.limits and record.exact(identity) == self.limits:
            return
        try:
            ensure_directory(self.state_directory, self.uid, 0o755)
            record.write(identity, self.limits, self.applied_at_start)
        except (TrustError, OSError) as error:
            self.warnings.append("The exact pinned limits could not be recorded in %s (%s): the next run compares "
                                 "with the CLI's rounded read-back." % (self.state_directory, error))

    def handle_running_servers(self, state):
        if self.percentage is None and not self.limits:
            return
        for server in state["servers"]:
            if server["status"] == "GONE" or server_matches(server, self.percentage, self.limits):
                continue
            if self.apply_to_running == "restart" and not server["clients"]:
                self.restart_server(server["pid"])
                continue
            why = "it has %d client%s" % (len(server["clients"]), "" if len(server["clients"]) == 1 else "s") \
                if server["clients"] else "apply_to_running is report"
            self.warnings.append(
                "MPS server %d still runs with the values it started with (active thread percentage %s, pinned "
                "limits %s): defaults bind only servers started later. Left alone because %s." % (
                    server["pid"], server["active_thread_percentage"], server["pinned_memory_limit"] or "none", why))

    def restart_server(self, pid):
        self.changed = True
        if self.check_mode:
            self.restarted_servers.append({"old": pid, "new": None})
            return
        try:
            uid = os.stat("/proc/%d" % pid).st_uid
        except OSError:
            return  # it exited on its own; the next client gets a server with the defaults
        try:
            self.control.shutdown_server(pid)
            if not self.control.wait(lambda: pid not in self.control.server_list(), self.timeout):
                raise DaemonError("MPS server %d did not shut down within %d s" % (pid, self.timeout))
            others = set(self.control.server_list())
            self.control.start_server(uid)
            new = self.control.wait(lambda: sorted(set(self.control.server_list()) - others), self.timeout)
        except MpsControlError as error:
            raise control_failure(error, "Cannot restart MPS server %d" % pid)
        self.restarted_servers.append({"old": pid, "new": new[0] if new else None})

    # Servers in FAULT -----------------------------------------------------------------------------
    def recover_faults(self, state):
        """Report the servers in FAULT, and with fault_recovery=end_clients end their clients (_mps_recovery).

        Returns the snapshot to go on with: `state` when nothing was ended, else a fresh one."""
        faulted = [s["pid"] for s in state["servers"] if s["status"] == "FAULT"]
        if not faulted:
            return state
        if self.fault_recovery == "none":
            health = self.control.assess(state)
            self.warnings.append(
                "MPS in %s has server%s in FAULT (%s): %s. fault_recovery=end_clients ends the clients of those "
                "servers on this host, which brings them back." % (
                    self.pipe_directory, "" if len(faulted) == 1 else "s", ", ".join(map(str, faulted)),
                    " ".join("%s What to do: %s." % (p["message"], p["action"]) for p in health["problems"]
                             if p["kind"] == "server_fault")))
            return state
        # NEVER terminate_client here: on the H200 (driver 580) `terminate_client <server> <client>` on a server in
        # FAULT did not end a sleeping client, and the control daemon then answered no command for ~55 s, until the
        # clients exited by themselves (docs/evidence/2026-12-04-h200/fault/sticky.jsonl, docs/fault.md). Ending
        # the client processes is what the record shows brings the server back.
        try:
            self.recovery = recover(self.control, state, check_mode=self.check_mode, timeout=self.timeout,
                                    multiuser=self.control.daemon_options(state["pid"])["multiuser"]
                                    if state.get("pid") else self.multiuser)
        except MpsControlError as error:
            raise control_failure(error, "Cannot read back the MPS servers in FAULT in %s after ending their "
                                         "clients" % self.pipe_directory)
        signals = self.recovery["signals"] or {}
        if self.recovery["would_end"] and (self.check_mode or signals.get("ended") or signals.get("killed")):
            self.changed = True
        still = sorted(pid for pid, status in self.recovery["status_after"].items()
                       if pid in self.recovery["servers"] and status == "FAULT")
        message = describe_recovery(self.recovery, self.check_mode)
        if still and not self.check_mode:
            problems = []
            if signals.get("survived"):
                problems.append("client%s %s survived SIGKILL" % (
                    "" if len(signals["survived"]) == 1 else "s", ", ".join(map(str, signals["survived"]))))
            for error in signals.get("errors") or []:
                problems.append("client %d could not be signalled (%s)" % (error["pid"], error["error"]))
            raise DaemonError(
                "MPS server%s %s in %s still in FAULT after fault_recovery=end_clients: %s%s." % (
                    "" if len(still) == 1 else "s", ", ".join(map(str, still)), self.pipe_directory,
                    message, ("; " + "; ".join(problems)) if problems else ""),
                changed=self.changed, fault_recovery=self.recovery_result())
        if still or self.recovery["refused"]:
            self.warnings.append(message + ".")
        return self.snapshot() if self.changed and not self.check_mode else state

    def recovery_result(self, before=None, after=None):
        """RV(fault_recovery): what recover() did, or, where it did not run, the servers' statuses before and after."""
        recovery = self.recovery or {
            "servers": [s["pid"] for s in before["servers"] if s["status"] == "FAULT"],
            "status_before": server_statuses(before["servers"]), "status_after": server_statuses(after["servers"])}
        signals = recovery.get("signals") or {}

        def keys(d):
            return dict((str(k), v) for k, v in sorted((d or {}).items()))

        return {"mode": self.fault_recovery, "faulted_servers": recovery.get("servers", []),
                "would_end": recovery.get("would_end", []), "ended": signals.get("ended", []),
                "killed": signals.get("killed", []), "refused": recovery.get("refused", []),
                "gone": [g["pid"] for g in recovery.get("gone", [])],
                "status_before": keys(recovery.get("status_before")), "status_after": keys(recovery.get("status_after"))}

    # Run ------------------------------------------------------------------------------------------
    def run(self):
        """(before, after, started_fresh), serialised with every other run on this pipe directory."""
        if self.check_mode or not os.path.isdir(self.state_directory) and self.state == "stopped":
            return self.steps()
        try:
            ensure_directory(self.state_directory, self.uid, 0o755)
            # Runs on one pipe directory are serialised: none reports values another one set meanwhile.
            with Lock(self.state_directory, self.control.record.lock_name, self.timeout + 30):
                return self.steps()
        except TrustError as error:
            raise DaemonError("state_directory %s cannot be used: %s" % (self.state_directory, error))

    def steps(self):
        before = self.snapshot()
        started_fresh = False
        current = before
        if self.state != "stopped" and before["running"]:
            current = self.recover_faults(before)
        if self.state in ("stopped", "restarted"):
            self.stop(current)
            if not self.check_mode or not before["running"]:
                self.clean_leftovers()
        if self.state in ("started", "restarted"):
            if self.state == "restarted" or not before["running"]:
                self.start()
                started_fresh = True
            else:
                self.check_started_as_planned(current)
            self.apply_defaults(None if started_fresh else current)
        # Nothing was done: the state is the one just read (a second snapshot would only cost CLI calls).
        after = self.snapshot() if self.changed and not self.check_mode else current
        if self.state != "stopped" and not started_fresh:
            self.handle_running_servers(after)
            if self.restarted_servers and not self.check_mode:
                after = self.snapshot()
        return before, after, started_fresh

    def result(self, before, after, started_fresh, diff=False):
        predicted = self.check_mode
        running = (self.state != "stopped") if predicted else after["running"]
        defaults = after["defaults"]
        if predicted and running:
            defaults = {"active_thread_percentage": self.percentage if self.percentage is not None else (
                None if started_fresh else defaults["active_thread_percentage"]),
                "pinned_memory_limit": dict(defaults["pinned_memory_limit"] if not started_fresh else {},
                                            **dict((str(o), mps_size(b)) for o, b in self.limits.items()))}
        result = dict(
            changed=self.changed,
            daemon={"running": running, "pid": None if predicted and started_fresh else after["pid"],
                    "pipe_directory": self.pipe_directory, "log_directory": self.log_directory,
                    "control_binary": self.control.binary},
            servers=[dict(s, matches_defaults=server_matches(s, self.percentage, self.limits))
                     for s in after["servers"]] if running else [],
            clients=after["clients"] if running else [],
            defaults=defaults if running else {"active_thread_percentage": None, "pinned_memory_limit": {}},
            requested={"active_thread_percentage": self.percentage,
                       "pinned_memory_limit": dict((str(o), mps_size(b)) for o, b in sorted(self.limits.items())),
                       "visible_devices": self.visible_uuids},
            restarted_servers=self.restarted_servers,
            stale_sockets_removed=self.removed_sockets,
        )
        result["fault_recovery"] = self.recovery_result(before, after)
        try:
            result["health"] = self.control.assess(after, expect_running=self.state != "stopped") \
                if not predicted else self.control.assess(before)
        except ControlHangs as error:
            raise control_failure(error, "Cannot judge the health of MPS in %s" % self.pipe_directory)
        if self.devices is not None:
            result["devices"] = self.devices
        if diff:
            servers_after = server_statuses(result["servers"])
            if predicted and self.recovery:
                servers_after.update(result["fault_recovery"]["status_after"])
            result["diff"] = {
                "before": describe(before["running"], before["defaults"], server_statuses(before["servers"])),
                "after": describe(running, result["defaults"], servers_after)}
        return result
