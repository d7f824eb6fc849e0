#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: mps_daemon
short_description: Start, stop or restart the NVIDIA MPS control daemon and set its defaults
version_added: 0.1.0
description:
  - Manages the MPS control daemon (C(nvidia-cuda-mps-control -d)) of one pipe directory, and the
    defaults it gives MPS servers (active thread percentage and pinned device memory limit).
  - Every value is validated before anything changes (the CLI silently ignores values it cannot
    read, and silently drops a pinned limit it cannot parse), and read back afterwards.
  - Defaults bind only servers started after they are set. A running server that holds other
    values is reported, and restarted only when O(apply_to_running=restart) and it has no clients.
  - Stopping while CUDA clients are attached fails and lists them, unless O(force=true).
  - Where systemd manages the daemon (role C(gpulab.mps.mps_host)), use this module with
    O(state=started) after the service starts, to set and verify the defaults.
  - On a host with other users, the pipe and log directories are used only when they are trusted (owned by
    the daemon's user, writable by nobody else, no symbolic link); a missing one is created race-free.
    The exact limits and a lock that serialises runs on one pipe directory live in O(state_directory).
extends_documentation_fragment:
  - gpulab.mps.attributes
  - gpulab.mps.mps_control
  - gpulab.mps.mps_control.state_directory
options:
  plan:
    description:
      - The host's MPS plan, the fact C(preflight_mps_plan) that the C(gpulab.mps.preflight) role sets
        (M(gpulab.mps.mps_plan)). Its devices, defaults, pipe and log directories and control binary are
        used as they are, already checked against NVML, so NVML is not read again.
      - Mutually exclusive with O(visible_devices), O(default_active_thread_percentage) and
        O(default_pinned_memory_limit); it overrides O(pipe_directory), O(log_directory), O(control_binary) and
        O(state_directory).
    type: dict
  defaults_applied_at_start:
    description:
      - The daemon's service sets these very defaults itself on every start (the drop-in of the
        C(gpulab.mps.mps_host) role). The exact pinned limits recorded then hold for a daemon that service
        restarted too, so a restarted daemon with the right limits is not reported as changed.
    type: bool
    default: false
  state:
    description:
      - V(started) starts the daemon when none answers on O(pipe_directory), then applies the defaults.
      - V(stopped) quits the daemon (refused while clients are attached, unless O(force=true)) and
        removes the sockets a quit leaves behind.
      - V(restarted) stops then starts it, with the same rules about clients.
    type: str
    choices: [started, stopped, restarted]
    default: started
  directory_mode:
    description:
      - Mode of O(pipe_directory) and O(log_directory) when this module creates them, as
        M(ansible.builtin.file) reads a mode - a quoted octal string (V("0711")), or an integer, which YAML
        gives for an unquoted 0711. A mode that lets group or others write is refused.
      - Existing directories keep their mode; one that is not trusted is refused, never changed.
    type: raw
    default: "0755"
  visible_devices:
    description:
      - GPUs the daemon may use, by UUID (or unique UUID prefix) or NVML index. Passed to the daemon as
        C(CUDA_VISIBLE_DEVICES) (UUIDs), so that its device ordinals are the positions in this list.
      - Applies when the daemon starts; a running daemon with other devices is reported, not restarted.
    type: list
    elements: str
  default_active_thread_percentage:
    description:
      - Default active thread percentage (1 to 100) of servers started from now on. A boolean is refused.
    type: raw
  default_pinned_memory_limit:
    description:
      - Default pinned device memory limit of servers started from now on.
      - One size for every device (V(2G), V(1536M), V(512MiB)), or a dict from device (NVML index or
        UUID) to size. Units are binary (K, M, G, T); the limit must be whole MiB.
      - At most the memory of the GPU. The CLI reads this back in whole units rounded down (1536M shows as 1G);
        the module compares accordingly, and keeps the exact value it set in O(state_directory).
    type: raw
  multiuser_server:
    description:
      - Start the daemon as a multi-user server (C(nvidia-cuda-mps-control -d -M)), so that clients of different
        Unix users share one MPS server instead of waiting for each other's (docs/qos.md has what this driver does
        with and without it). With O(plan), the plan's C(daemon.multiuser_server).
      - Applies when the daemon starts; a running daemon started the other way is reported, not restarted.
    type: bool
    default: false
  apply_to_running:
    description:
      - What to do with running servers that hold other values than the defaults.
      - V(report) leaves them alone and warns. V(restart) shuts down each such server that has no
        clients and starts a new one for the same user, which takes the defaults. Servers with
        clients are never touched.
    type: str
    choices: [report, restart]
    default: report
  force:
    description:
      - Stop or restart even while clients are attached. Their work is lost; after O(timeout) seconds
        the daemon forcibly shuts their servers down (C(quit -t)). Without it the daemon is only asked to
        C(quit), which waits for clients.
    type: bool
    default: false
  timeout:
    description:
      - Seconds to wait for the daemon to start or to stop, for a server in FAULT to be ACTIVE again
        (O(fault_recovery=end_clients)), and the bound of every call of the control binary (1 to 3600).
    type: int
    default: 30
  fault_recovery:
    description:
      - What to do, when the daemon runs, with an MPS server in FAULT (a client hit a fatal GPU error; every client of
        that server got the error, and new clients are refused until they all exit; docs/fault.md).
      - V(none) changes nothing; the result reports the servers in FAULT (RV(fault_recovery), RV(health)) and a
        warning says what to do.
      - V(end_clients) ends the client processes of the servers in FAULT, and of no other server (their CUDA contexts
        are already lost) with SIGTERM, up to 10 s, then SIGKILL; then it waits up to O(timeout) seconds for each server
        to be ACTIVE again and reads it back. A client is ended only when it provably is that process on this host,
        in this host's PID namespace (a client in a pod or a container is reported, with the advice to end that pod,
        never signalled), alive, and with the same start time when it is signalled as when it was read. The task
        fails, after ending what it could, when a server is still in FAULT.
      - C(terminate_client) of the control daemon is never used; on driver 580 it did not end a client that was
        not calling CUDA, and the daemon then answered no command until the clients exited by themselves.
      - With O(state=stopped) only V(none) is accepted (a stopped daemon has no server to recover).
    type: str
    choices: [none, end_clients]
    default: none
    version_added: 0.2.0
requirements:
  - nvidia-cuda-mps-control on the target
  - nvidia-ml-py, when O(visible_devices) or O(default_pinned_memory_limit) is given without O(plan) (to check
    the devices)
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    support: full
    details: V(restarted) always changes; O(fault_recovery=end_clients) changes only while a server is in FAULT.
notes:
  - Defaults set through the CLI live in the daemon's memory; a restarted daemon starts with none.
    The C(gpulab.mps.mps_host) role's systemd unit re-applies them on every start.
  - A daemon that is already gone counts as stopped; what it left in the pipe directory (its pid file, fifo
    and sockets, when they are the daemon user's) is removed once its PID is dead.
author:
  - gpulab.mps contributors (@gpulab)
"""

EXAMPLES = r"""
- name: Start MPS with a quarter of the SMs and 20 GiB per client by default
  gpulab.mps.mps_daemon:
    state: started
    default_active_thread_percentage: 25
    default_pinned_memory_limit: 20G

- name: Per-device limits, by index and by UUID
  gpulab.mps.mps_daemon:
    default_pinned_memory_limit:
      "0": 1536M
      GPU-058fcf08-fc4a-49f5-ddd9-6d7fedc642b2: 4G

- name: Apply new defaults to idle servers too
  gpulab.mps.mps_daemon:
    default_active_thread_percentage: 50
    apply_to_running: restart

- name: Apply the host's plan (what the mps_host role does)
  gpulab.mps.mps_daemon:
    plan: "{{ preflight_mps_plan }}"

- name: Bring servers in FAULT back by ending their clients (their CUDA work is already lost)
  gpulab.mps.mps_daemon:
    state: started
    fault_recovery: end_clients
  register: mps_recovery

- name: Stop MPS, even under running jobs
  gpulab.mps.mps_daemon:
    state: stopped
    force: true
"""

RETURN = r"""
daemon:
  description: The control daemon after the task.
  returned: always
  type: dict
  sample: {running: true, pid: 413, pipe_directory: /tmp/nvidia-mps, log_directory: /var/log/nvidia-mps,
           control_binary: /usr/bin/nvidia-cuda-mps-control}
servers:
  description: MPS servers after the task (see M(gpulab.mps.mps_info)), each with C(matches_defaults).
  returned: always
  type: list
  elements: dict
  sample: [{pid: 486, status: ACTIVE, clients: [497], active_thread_percentage: 50.0, matches_defaults: true}]
clients:
  description: The daemon's C(ps) table after the task.
  returned: always
  type: list
  elements: dict
  sample: [{pid: 497, id: 2, server: 486, device: GPU-058fcf08-fc4a-49f5, namespace: "4026531836", command: python3}]
defaults:
  description: Defaults in force after the task, as read back (pinned limits as the CLI shows them).
  returned: always
  type: dict
  sample: {active_thread_percentage: 50.0, pinned_memory_limit: {"0": "1G"}}
devices:
  description: MPS device ordinal to GPU UUID, for the devices this task configured.
  returned: when NVML was queried
  type: dict
  sample: {"0": GPU-058fcf08-fc4a-49f5-ddd9-6d7fedc642b2}
requested:
  description:
    - The defaults asked for, resolved to MPS device ordinals and to the exact sizes sent to the CLI,
      and O(visible_devices) resolved to UUIDs (null when not given); with O(plan), the plan's.
  returned: always
  type: dict
  sample: {active_thread_percentage: 50.0, pinned_memory_limit: {"0": 1536M},
           visible_devices: [GPU-058fcf08-fc4a-49f5-ddd9-6d7fedc642b2]}
restarted_servers:
  description: Servers shut down for O(apply_to_running=restart), with the servers started in their place.
  returned: always
  type: list
  elements: dict
  sample: [{old: 486, new: 530}]
stale_sockets_removed:
  description: What a stopped daemon left in O(pipe_directory) and this task removed (its sockets, fifo, pid file).
  returned: always
  type: list
  elements: str
  sample: [control, control_lock, control_privileged]
fault_recovery:
  description:
    - The servers that were in FAULT when the task read the daemon, and what O(fault_recovery) did about them.
    - C(ended) are the clients ended (C(killed) those of them that needed SIGKILL), C(would_end) those that are or
      would be (check mode), C(refused) the clients that were not ended and why (another PID namespace, so end that
      pod), C(gone) clients that had exited already, C(status_before) and C(status_after) each server's status
      (C(status_after) predicted in check mode).
  returned: always
  type: dict
  sample:
    mode: end_clients
    faulted_servers: [492]
    would_end: [449, 637]
    ended: [449, 637]
    killed: [637]
    refused: []
    gone: []
    status_before: {"492": FAULT}
    status_after: {"492": ACTIVE}
health:
  description:
    - The health of MPS after the task, as M(gpulab.mps.mps_info) reports it (the same judgement); in check mode, as
      it is now.
  returned: always
  type: dict
  sample: {healthy: true, daemon: running, faulted_servers: [], problems: []}
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpulab.mps.plugins.module_utils._common import (
    MpsControlError, fail_control, mps_argument_spec, path_errors, query_gpus, timeout_error)
from ansible_collections.gpulab.mps.plugins.module_utils._mps_control import (
    COMMAND_TIMEOUT, DaemonNotRunning, LimitRecord, MpsControl, default_state_directory, find_control_binary, pid_alive,
    with_exact_limits)
from ansible_collections.gpulab.mps.plugins.module_utils._mps_output import (
    ALREADY_RUNNING, DAEMON_FILES, LOG_FIFO, PID_FILE)
from ansible_collections.gpulab.mps.plugins.module_utils._mps_recovery import describe as describe_recovery
from ansible_collections.gpulab.mps.plugins.module_utils._mps_recovery import recover
from ansible_collections.gpulab.mps.plugins.module_utils._plan import daemon_environment, daemon_plan, plan_problems
from ansible_collections.gpulab.mps.plugins.module_utils._sizes import mps_size, readback_matches
from ansible_collections.gpulab.mps.plugins.module_utils._trust import (
    Lock, TrustError, directory_problem, ensure_directory, normalize_path, parse_mode, remove_owned)


# --- decisions (pure: nothing here touches the host) ------------------------------------------------

def pinned_in_sync(size_bytes, shown):
    """Whether the daemon's default for one device already is size_bytes.

    `shown` comes from the snapshot: the CLI's read-back (rounded down to whole units), replaced by
    the exact value when this module recorded setting it on this daemon. A rounded read-back that
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


# --- the module -----------------------------------------------------------------------------------

class MpsDaemon(object):
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.changed = False
        self.warnings = []
        self.restarted_servers = []
        self.removed_sockets = []
        self.devices = None
        self.uid = os.geteuid()
        self.recovery = None

    # Validation -----------------------------------------------------------------------------------
    def validate(self):
        """Every setting checked, devices resolved, paths trusted: all before anything changes."""
        p = self.params
        plan = p["plan"]
        errors = []
        if plan is not None:
            errors.extend(plan_problems(plan))
            if not errors:
                p["pipe_directory"], p["log_directory"] = plan["pipe_directory"], plan["log_directory"]
                p["control_binary"], p["state_directory"] = plan["control_binary"], plan["state_directory"]
        errors.extend(path_errors(self.module))
        error = timeout_error(p["timeout"])
        if error:
            errors.append(error)
        if p["fault_recovery"] != "none" and p["state"] == "stopped":
            errors.append("fault_recovery=%s needs state started or restarted: a stopped daemon has no server to "
                          "recover" % p["fault_recovery"])
        try:
            self.dir_mode = parse_mode(p["directory_mode"])
            if self.dir_mode & 0o022:
                errors.append("directory_mode %04o lets group or others write in the pipe directory, where they could "
                              "replace the daemon's sockets: use 0755 or 0711" % self.dir_mode)
        except ValueError as error:
            errors.append("directory_mode must be a mode such as \"0755\": %s" % error)
        state_directory = p["state_directory"] or default_state_directory()
        self.state_directory, error = normalize_path("state_directory", state_directory)
        if error:
            errors.append(error)
        if plan is not None and not errors:
            daemon = plan["daemon"]
            self.devices = dict(daemon.get("devices") or {}) or None
        elif not errors:
            gpus = None
            if p["state"] != "stopped" and (p["visible_devices"] or p["default_pinned_memory_limit"] not in (None, "")):
                gpus = query_gpus(self.module)[1]
            daemon, daemon_errors = daemon_plan(gpus, p["visible_devices"], p["default_active_thread_percentage"],
                                                p["default_pinned_memory_limit"])
            errors.extend(daemon_errors)
            if gpus is not None:
                self.devices = daemon["devices"]
        if not errors:
            for option in ("pipe_directory", "log_directory"):
                problem = directory_problem(p[option], self.uid, creatable=True)
                if problem:
                    errors.append("%s: %s" % (option, problem))
            problem = directory_problem(self.state_directory, self.uid, creatable=True)
            if problem:
                errors.append("state_directory: %s" % problem)
        if errors:
            self.module.fail_json(msg="Invalid MPS settings, nothing was changed: " + "; ".join(errors), errors=errors)
        self.multiuser = bool(daemon.get("multiuser_server")) if plan is not None else bool(p["multiuser_server"])
        self.percentage = daemon["active_thread_percentage"]
        self.limits = dict((int(o), b) for o, b in daemon["pinned_memory_limit"].items())
        self.visible_uuids = daemon["visible_devices"]
        env = daemon_environment(p["pipe_directory"], p["log_directory"], daemon)
        binary = find_control_binary(self.module, p["control_binary"])
        self.control = MpsControl(self.module, binary, p["pipe_directory"], p["log_directory"],
                                  extra_env=dict((k, v) for k, v in env.items() if k == "CUDA_VISIBLE_DEVICES"),
                                  timeout=p["timeout"], trusted_uids=[self.uid])
        self.record = LimitRecord(self.state_directory, p["pipe_directory"])

    # Helpers --------------------------------------------------------------------------------------
    def ordinals(self):
        return sorted(self.limits) or [0]

    def recorded(self, pid):
        requested = self.limits if self.params["defaults_applied_at_start"] else None
        return self.record.exact(self.control.daemon_identity(pid), requested)

    def snapshot(self):
        try:
            state = self.control.snapshot(self.ordinals())
            if state["running"]:
                state["defaults"] = with_exact_limits(state["defaults"], self.recorded(state["pid"]))
            return state
        except MpsControlError as error:
            fail_control(self.module, error, "Cannot read the MPS state in %s" % self.params["pipe_directory"])

    def ensure_directory(self, option):
        path = self.params[option]
        if os.path.isdir(path):
            return  # trusted: checked in validate()
        self.changed = True
        if not self.module.check_mode:
            try:
                ensure_directory(path, self.uid, self.dir_mode)
            except TrustError as error:
                # The first change of a start: when it fails, nothing has been changed yet.
                self.module.fail_json(msg="%s %s cannot be used: %s" % (option, path, error))

    # Stop -----------------------------------------------------------------------------------------
    def stop(self, state):
        if not state["running"]:
            return
        clients = state["clients"]
        if clients and not self.params["force"]:
            listing = ", ".join("%d (%s, server %d)" % (c["pid"], c["command"] or "?", c["server"]) for c in clients)
            self.module.fail_json(
                msg="Refusing to stop the MPS control daemon in %s: %d client%s attached: %s. Stop them first, "
                    "or set force=true to shut their servers down (their work is lost)."
                    % (self.params["pipe_directory"], len(clients), "" if len(clients) == 1 else "s", listing),
                clients=clients)
        self.changed = True
        if self.module.check_mode:
            return
        pid = state["pid"]
        # force decides, not the snapshot: a client that attached since is waited for unless force says otherwise.
        command = "quit -t %d" % self.params["timeout"] if self.params["force"] else "quit"
        try:
            # `quit -t N` returns once it forced the servers down, after N s: its bound is longer.
            self.control.run(command, timeout=self.params["timeout"] + COMMAND_TIMEOUT)
        except DaemonNotRunning:
            pass  # it died on its own meanwhile: stopped is what was asked
        except MpsControlError as error:
            fail_control(self.module, error, "Cannot stop the MPS control daemon in %s" % self.params["pipe_directory"])
        gone = self.control.wait(lambda: not self.control.is_running() and not (pid and pid_alive(pid)),
                                 self.params["timeout"] + 5)
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
            self.module.fail_json(msg="The MPS control daemon in %s (pid %s) did not exit within %d s after %s.%s %s" % (
                self.params["pipe_directory"], pid, self.params["timeout"] + 5, command, waiting,
                self.control.log_tail().strip()))

    def clean_leftovers(self):
        """Remove what a daemon that is gone left behind: its sockets, fifo and pid file, when they are ours."""
        if self.control.daemon_pid() is not None or not os.path.isdir(self.params["pipe_directory"]):
            return
        entries = self.control.pipe_entries()
        present = entries["sockets"] + ([LOG_FIFO] if entries["log_fifo"] else []) + \
            ([PID_FILE] if entries["pid_file"] else [])
        kinds = dict((name, DAEMON_FILES[name]) for name in present)
        if not kinds:
            return
        if self.module.check_mode:
            self.removed_sockets = sorted(kinds)
            self.changed = True
            return
        self.removed_sockets = remove_owned(self.params["pipe_directory"], kinds, self.uid)
        self.changed = self.changed or bool(self.removed_sockets)

    # Start ----------------------------------------------------------------------------------------
    def start(self):
        self.ensure_directory("pipe_directory")
        self.ensure_directory("log_directory")
        self.changed = True
        if self.module.check_mode:
            return
        try:
            rc, out, err = self.control.start_daemon(self.multiuser)
        except MpsControlError as error:
            fail_control(self.module, error, "MPS control daemon in %s did not start" % self.params["pipe_directory"])
        if rc != 0:
            hint = " (a daemon process holds the pipe directory but does not answer)" if ALREADY_RUNNING in out + err else ""
            self.module.fail_json(msg="MPS control daemon in %s did not start%s: %s" % (
                self.params["pipe_directory"], hint, (out + err).strip() or self.control.log_tail().strip()),
                cmd=self.control.start_argv(self.multiuser), rc=rc, stdout=out, stderr=err)
        if not self.control.wait(self.control.is_running, self.params["timeout"]):
            self.module.fail_json(msg="MPS control daemon in %s did not answer within %d s: %s; is the NVIDIA driver "
                                      "loaded?" % (self.params["pipe_directory"], self.params["timeout"],
                                                   self.control.log_tail().strip() or "control.log is empty"))

    def check_multiuser(self, state):
        """Warn when the running daemon was started with (or without) -M against what is asked."""
        if not state["pid"]:
            return
        try:
            with open("/proc/%d/cmdline" % state["pid"], "rb") as handle:
                argv = handle.read().split(b"\0")[1:]
        except (IOError, OSError):
            return
        running = b"-M" in argv or b"--multiuser-server" in argv
        if running != self.multiuser:
            self.warnings.append("The running MPS control daemon was started %s -M (multi-user server), not %s; it "
                                 "keeps that until it restarts (state=restarted, when no client runs)." % (
                                     "with" if running else "without", "with" if self.multiuser else "without"))

    def check_visible_devices(self, state):
        """Warn when the running daemon was started with other CUDA_VISIBLE_DEVICES."""
        if not state["pid"] or self.visible_uuids is None:
            return
        try:
            with open("/proc/%d/environ" % state["pid"], "rb") as handle:
                env = dict(item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item)
        except (IOError, OSError):
            return
        current = env.get(b"CUDA_VISIBLE_DEVICES", b"").decode()
        if current != ",".join(self.visible_uuids):
            self.warnings.append("The running MPS control daemon has CUDA_VISIBLE_DEVICES=%r, not %r; it keeps its "
                                 "devices until it restarts (state=restarted)." % (current, ",".join(self.visible_uuids)))

    # Defaults -------------------------------------------------------------------------------------
    def apply_defaults(self, state):
        """Set what differs, then read it back. `state` is the snapshot of a running daemon, or None
        when the daemon was (or, in check mode, would be) just started with no defaults."""
        current = state["defaults"] if state else {"active_thread_percentage": None, "pinned_memory_limit": {}}
        set_percentage = self.percentage is not None and (
            current["active_thread_percentage"] is None or abs(current["active_thread_percentage"] - self.percentage) > 0.05)
        set_limits = dict((o, b) for o, b in self.limits.items()
                          if not pinned_in_sync(b, current["pinned_memory_limit"].get(str(o))))
        if not (set_percentage or set_limits):
            if self.limits and not self.module.check_mode:
                self.keep_record(state)
            return
        self.changed = True
        if self.module.check_mode:
            return
        try:
            if set_percentage:
                echoed = self.control.set_default_active_thread_percentage(self.percentage)
                if abs(echoed - self.percentage) > 0.05:
                    self.module.fail_json(msg="MPS kept default active thread percentage %g after setting %g" % (
                        echoed, self.percentage))
            for ordinal, size_bytes in sorted(set_limits.items()):
                self.control.set_default_pinned_limit(ordinal, mps_size(size_bytes))
                shown = self.control.default_pinned_limit(ordinal)
                if not readback_matches(size_bytes, shown):
                    self.module.fail_json(msg="MPS did not take default pinned memory limit %s for device %d: it reads "
                                              "back %r" % (mps_size(size_bytes), ordinal, shown))
        except MpsControlError as error:
            fail_control(self.module, error, "Cannot set the MPS defaults in %s" % self.params["pipe_directory"])
        self.keep_record(None)

    def keep_record(self, state):
        """Record the exact limits in force on this daemon, when the record does not already say so."""
        pid = state["pid"] if state else self.control.daemon_pid()
        identity = self.control.daemon_identity(pid)
        known = self.recorded(pid)
        if known == self.limits and self.record.exact(identity) == self.limits:
            return
        try:
            ensure_directory(self.state_directory, self.uid, 0o755)
            self.record.write(identity, self.limits, self.params["defaults_applied_at_start"])
        except (TrustError, OSError) as error:
            self.warnings.append("The exact pinned limits could not be recorded in %s (%s): the next run compares "
                                 "with the CLI's rounded read-back." % (self.state_directory, error))

    def handle_running_servers(self, state):
        if self.percentage is None and not self.limits:
            return
        for server in state["servers"]:
            if server["status"] == "GONE" or server_matches(server, self.percentage, self.limits):
                continue
            if self.params["apply_to_running"] == "restart" and not server["clients"]:
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
        if self.module.check_mode:
            self.restarted_servers.append({"old": pid, "new": None})
            return
        try:
            uid = os.stat("/proc/%d" % pid).st_uid
        except OSError:
            return  # it exited on its own; the next client gets a server with the defaults
        try:
            self.control.shutdown_server(pid)
            if not self.control.wait(lambda: pid not in self.control.server_list(), self.params["timeout"]):
                self.module.fail_json(msg="MPS server %d did not shut down within %d s" % (pid, self.params["timeout"]))
            others = set(self.control.server_list())
            self.control.run("start_server -uid %d" % uid)
            new = self.control.wait(lambda: sorted(set(self.control.server_list()) - others), self.params["timeout"])
        except MpsControlError as error:
            fail_control(self.module, error, "Cannot restart MPS server %d" % pid)
        self.restarted_servers.append({"old": pid, "new": new[0] if new else None})

    # Servers in FAULT -----------------------------------------------------------------------------
    def recover_faults(self, state):
        """Report the servers in FAULT, and with fault_recovery=end_clients end their clients (_mps_recovery).

        Returns the snapshot to go on with: `state` when nothing was ended, else a fresh one."""
        faulted = [s["pid"] for s in state["servers"] if s["status"] == "FAULT"]
        if not faulted:
            return state
        if self.params["fault_recovery"] == "none":
            health = self.control.assess(state)
            self.warnings.append(
                "MPS in %s has server%s in FAULT (%s): %s. fault_recovery=end_clients ends the clients of those "
                "servers on this host, which brings them back." % (
                    self.params["pipe_directory"], "" if len(faulted) == 1 else "s", ", ".join(map(str, faulted)),
                    " ".join("%s What to do: %s." % (p["message"], p["action"]) for p in health["problems"]
                             if p["kind"] == "server_fault")))
            return state
        # NEVER terminate_client here: on the H200 (driver 580) `terminate_client <server> <client>` on a server in
        # FAULT did not end a sleeping client, and the control daemon then answered no command for ~55 s, until the
        # clients exited by themselves (docs/evidence/2026-12-04-h200/fault/sticky.jsonl, docs/fault.md). Ending
        # the client processes is what the record shows brings the server back.
        try:
            self.recovery = recover(self.control, state, check_mode=self.module.check_mode,
                                    timeout=self.params["timeout"])
        except MpsControlError as error:
            fail_control(self.module, error, "Cannot read back the MPS servers in FAULT in %s after ending their "
                                             "clients" % self.params["pipe_directory"])
        signals = self.recovery["signals"] or {}
        if self.recovery["would_end"] and (self.module.check_mode or signals.get("ended") or signals.get("killed")):
            self.changed = True
        still = sorted(pid for pid, status in self.recovery["status_after"].items()
                       if pid in self.recovery["servers"] and status == "FAULT")
        message = describe_recovery(self.recovery, self.module.check_mode)
        if still and not self.module.check_mode:
            problems = []
            if signals.get("survived"):
                problems.append("client%s %s survived SIGKILL" % (
                    "" if len(signals["survived"]) == 1 else "s", ", ".join(map(str, signals["survived"]))))
            for error in signals.get("errors") or []:
                problems.append("client %d could not be signalled (%s)" % (error["pid"], error["error"]))
            self.module.fail_json(
                msg="MPS server%s %s in %s still in FAULT after fault_recovery=end_clients: %s%s." % (
                    "" if len(still) == 1 else "s", ", ".join(map(str, still)), self.params["pipe_directory"],
                    message, ("; " + "; ".join(problems)) if problems else ""),
                changed=self.changed, fault_recovery=self.recovery_result())
        if still or self.recovery["refused"]:
            self.warnings.append(message + ".")
        return self.snapshot() if self.changed and not self.module.check_mode else state

    def recovery_result(self, before=None, after=None):
        """RV(fault_recovery): what recover() did, or, where it did not run, the servers' statuses before and after."""
        recovery = self.recovery or {
            "servers": [s["pid"] for s in before["servers"] if s["status"] == "FAULT"],
            "status_before": server_statuses(before["servers"]), "status_after": server_statuses(after["servers"])}
        signals = recovery.get("signals") or {}

        def keys(d):
            return dict((str(k), v) for k, v in sorted((d or {}).items()))

        return {"mode": self.params["fault_recovery"], "faulted_servers": recovery.get("servers", []),
                "would_end": recovery.get("would_end", []), "ended": signals.get("ended", []),
                "killed": signals.get("killed", []), "refused": recovery.get("refused", []),
                "gone": [g["pid"] for g in recovery.get("gone", [])],
                "status_before": keys(recovery.get("status_before")), "status_after": keys(recovery.get("status_after"))}

    # Run ------------------------------------------------------------------------------------------
    def run(self):
        self.validate()
        if self.module.check_mode or not os.path.isdir(self.state_directory) and self.params["state"] == "stopped":
            return self.steps()
        try:
            ensure_directory(self.state_directory, self.uid, 0o755)
            # Runs on one pipe directory are serialised: none reports values another one set meanwhile.
            with Lock(self.state_directory, self.record.lock_name, self.params["timeout"] + 30):
                return self.steps()
        except TrustError as error:
            self.module.fail_json(msg="state_directory %s cannot be used: %s" % (self.state_directory, error))

    def steps(self):
        before = self.snapshot()
        wanted = self.params["state"]
        started_fresh = False
        current = before
        if wanted != "stopped" and before["running"]:
            current = self.recover_faults(before)
        if wanted in ("stopped", "restarted"):
            self.stop(current)
            if not self.module.check_mode or not before["running"]:
                self.clean_leftovers()
        if wanted in ("started", "restarted"):
            if wanted == "restarted" or not before["running"]:
                self.start()
                started_fresh = True
            else:
                self.check_visible_devices(current)
                self.check_multiuser(current)
            self.apply_defaults(None if started_fresh else current)
        # Nothing was done: the state is the one just read (a second snapshot would only cost CLI calls).
        after = self.snapshot() if self.changed and not self.module.check_mode else current
        if wanted != "stopped" and not started_fresh:
            self.handle_running_servers(after)
            if self.restarted_servers and not self.module.check_mode:
                after = self.snapshot()
        return before, after, started_fresh

    def result(self, before, after, started_fresh):
        predicted = self.module.check_mode
        running = (self.params["state"] != "stopped") if predicted else after["running"]
        defaults = after["defaults"]
        if predicted and running:
            defaults = {"active_thread_percentage": self.percentage if self.percentage is not None else (
                None if started_fresh else defaults["active_thread_percentage"]),
                "pinned_memory_limit": dict(defaults["pinned_memory_limit"] if not started_fresh else {},
                                            **dict((str(o), mps_size(b)) for o, b in self.limits.items()))}
        result = dict(
            changed=self.changed,
            daemon={"running": running, "pid": None if predicted and started_fresh else after["pid"],
                    "pipe_directory": self.params["pipe_directory"], "log_directory": self.params["log_directory"],
                    "control_binary": self.control.binary},
            servers=[dict(s, matches_defaults=server_matches(s, self.percentage, self.limits)) for s in after["servers"]]
            if running else [],
            clients=after["clients"] if running else [],
            defaults=defaults if running else {"active_thread_percentage": None, "pinned_memory_limit": {}},
            requested={"active_thread_percentage": self.percentage,
                       "pinned_memory_limit": dict((str(o), mps_size(b)) for o, b in sorted(self.limits.items())),
                       "visible_devices": self.visible_uuids},
            restarted_servers=self.restarted_servers,
            stale_sockets_removed=self.removed_sockets,
        )
        result["fault_recovery"] = self.recovery_result(before, after)
        result["health"] = self.control.assess(after, expect_running=self.params["state"] != "stopped") \
            if not predicted else self.control.assess(before)
        if self.devices is not None:
            result["devices"] = self.devices
        if self.module._diff:
            servers_after = server_statuses(result["servers"])
            if predicted and self.recovery:
                servers_after.update(result["fault_recovery"]["status_after"])
            result["diff"] = {
                "before": describe(before["running"], before["defaults"], server_statuses(before["servers"])),
                "after": describe(running, result["defaults"], servers_after)}
        for warning in self.warnings:
            self.module.warn(warning)
        return result


def server_statuses(servers):
    """{pid (a string): status} of a snapshot's servers."""
    return dict((str(s["pid"]), s["status"]) for s in servers)


def describe(running, defaults, statuses=None):
    """The state shown in --diff; statuses: server_statuses() of the servers."""
    return {"state": "running" if running else "stopped",
            "default_active_thread_percentage": defaults.get("active_thread_percentage"),
            "default_pinned_memory_limit": dict(defaults.get("pinned_memory_limit") or {}),
            "servers": dict(statuses or {})}


def main():
    module = AnsibleModule(
        argument_spec=mps_argument_spec(
            state=dict(type="str", default="started", choices=["started", "stopped", "restarted"]),
            plan=dict(type="dict"),
            directory_mode=dict(type="raw", default="0755"),
            visible_devices=dict(type="list", elements="str"),
            default_active_thread_percentage=dict(type="raw"),
            default_pinned_memory_limit=dict(type="raw"),
            apply_to_running=dict(type="str", default="report", choices=["report", "restart"]),
            force=dict(type="bool", default=False),
            timeout=dict(type="int", default=30),
            state_directory=dict(type="str"),
            defaults_applied_at_start=dict(type="bool", default=False),
            multiuser_server=dict(type="bool", default=False),
            fault_recovery=dict(type="str", default="none", choices=["none", "end_clients"]),
        ),
        mutually_exclusive=[("plan", "visible_devices"), ("plan", "default_active_thread_percentage"),
                            ("plan", "default_pinned_memory_limit")],
        supports_check_mode=True,
    )
    daemon = MpsDaemon(module)
    module.exit_json(**daemon.result(*daemon.run()))


if __name__ == "__main__":
    main()
