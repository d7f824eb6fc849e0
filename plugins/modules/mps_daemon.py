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
extends_documentation_fragment:
  - gpulab.mps.attributes
  - gpulab.mps.mps_control
options:
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
      - Mode of O(pipe_directory) and O(log_directory) when this module creates them.
      - Existing directories keep their mode; a world-writable one without the sticky bit is reported.
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
      - Default active thread percentage (1 to 100) of servers started from now on.
    type: float
  default_pinned_memory_limit:
    description:
      - Default pinned device memory limit of servers started from now on.
      - One size for every device (V(2G), V(1536M), V(512MiB)), or a dict from device (NVML index or
        UUID) to size. Units are binary (K, M, G, T); the limit must be whole MiB.
      - The CLI reads this back in whole units rounded down (1536M shows as 1G); the module compares
        accordingly, and keeps the exact value it set in C(gpulab-mps-defaults.json) in O(pipe_directory).
    type: raw
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
        the daemon forcibly shuts their servers down (C(quit -t)).
    type: bool
    default: false
  timeout:
    description:
      - Seconds to wait for the daemon to start or to stop.
    type: int
    default: 30
requirements:
  - nvidia-cuda-mps-control on the target
  - nvidia-ml-py, when O(visible_devices) or O(default_pinned_memory_limit) is given (to check the devices)
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    support: full
    details: V(restarted) always changes.
notes:
  - Defaults set through the CLI live in the daemon's memory; a restarted daemon starts with none.
    The C(gpulab.mps.mps_host) role's systemd unit re-applies them on every start.
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
      and O(visible_devices) resolved to UUIDs (null when not given).
    - The C(gpulab.mps.mps_host) role renders its systemd unit from this (run in check mode first).
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
  description: Sockets of a stopped daemon removed from O(pipe_directory).
  returned: always
  type: list
  elements: str
  sample: [control, control_lock, control_privileged]
"""

import os
import stat

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpulab.mps.plugins.module_utils._common import (
    MpsControlError, fail_control, mps_argument_spec, mps_control, query_gpus)
from ansible_collections.gpulab.mps.plugins.module_utils._mps_control import (
    ALREADY_RUNNING, RECORD_FILE, pid_alive)
from ansible_collections.gpulab.mps.plugins.module_utils._nvml import resolve_devices
from ansible_collections.gpulab.mps.plugins.module_utils._sizes import (
    SizeError, mps_size, parse_size, readback_matches)


# --- validation (pure: nothing here touches the host) ----------------------------------------------

def validate_percentage(value):
    """The active thread percentage, or an error message. MPS takes (0, 100]; we take 1 to 100."""
    if value is None:
        return None, None
    if not 1 <= value <= 100:
        return None, ("default_active_thread_percentage must be between 1 and 100, got %g "
                      "(the CLI would silently keep its old value)" % value)
    return float(value), None


def pinned_request(value):
    """Normalise default_pinned_memory_limit to {selector: bytes} ({"*": bytes} for every device).

    Returns (request, errors).
    """
    if value is None or value == "":
        return None, []
    items = value.items() if isinstance(value, dict) else [("*", value)]
    request, errors = {}, []
    for selector, size in items:
        try:
            size_bytes = parse_size(size)
            mps_size(size_bytes)
        except SizeError as error:
            errors.append("default_pinned_memory_limit%s: %s" % ("" if selector == "*" else " for device %s" % selector, error))
            continue
        request[str(selector)] = size_bytes
    return request, errors


def plan_devices(gpus, visible, pinned):
    """Resolve visible_devices and the pinned request against the GPUs NVML lists.

    Returns (visible_uuids or None, {mps_ordinal: bytes}, {mps_ordinal: uuid}, errors). With
    visible_devices the daemon numbers devices by their position in that list.
    """
    errors = []
    visible_indexes = None
    if visible:
        visible_indexes, errors = resolve_devices(gpus, visible)
    ordinal_of = dict((index, pos) for pos, index in enumerate(visible_indexes)) if visible_indexes is not None \
        else dict((g["index"], g["index"]) for g in gpus)
    uuids = dict((str(ordinal), gpus[index]["uuid"]) for index, ordinal in ordinal_of.items())
    limits = {}
    for selector, size_bytes in sorted((pinned or {}).items()):
        if selector == "*":
            targets = sorted(ordinal_of)
        else:
            targets, device_errors = resolve_devices(gpus, [selector])
            errors.extend("default_pinned_memory_limit: %s" % e for e in device_errors)
            for index in targets:
                if index not in ordinal_of:
                    errors.append("default_pinned_memory_limit: device %s (GPU %d) is not in visible_devices" % (selector, index))
            targets = [i for i in targets if i in ordinal_of]
        for index in targets:
            limits[ordinal_of[index]] = size_bytes
    visible_uuids = [gpus[i]["uuid"] for i in visible_indexes] if visible_indexes is not None else None
    return visible_uuids, limits, uuids, errors


def directory_problem(path):
    """Why `path` cannot be used or created as a directory, or None. Reads only."""
    if os.path.lexists(path):
        if not os.path.isdir(path):
            return "%s exists and is not a directory" % path
        return None
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return "%s cannot be created: %s is not a directory" % (path, parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        return "%s cannot be created: no write permission in %s" % (path, parent)
    if os.statvfs(parent).f_flag & os.ST_RDONLY:
        return "%s cannot be created: %s is on a read-only file system" % (path, parent)
    return None


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

    # Validation -----------------------------------------------------------------------------------
    def validate(self):
        p = self.params
        errors = []
        self.percentage, error = validate_percentage(p["default_active_thread_percentage"])
        if error:
            errors.append(error)
        pinned, pinned_errors = pinned_request(p["default_pinned_memory_limit"])
        errors.extend(pinned_errors)
        try:
            self.dir_mode = int(str(p["directory_mode"]), 8)
        except ValueError:
            errors.append("directory_mode must be an octal mode such as 0755, got %r" % p["directory_mode"])
        if p["state"] != "stopped":
            for option in ("pipe_directory", "log_directory"):
                problem = directory_problem(p[option])
                if problem:
                    errors.append("%s: %s" % (option, problem))
        if p["timeout"] < 1:
            errors.append("timeout must be at least 1 second")
        self.visible_uuids, self.limits = None, {}
        if p["state"] != "stopped" and (p["visible_devices"] or pinned):
            _driver, gpus = query_gpus(self.module)
            self.visible_uuids, self.limits, self.devices, device_errors = plan_devices(gpus, p["visible_devices"], pinned)
            errors.extend(device_errors)
        if errors:
            self.module.fail_json(msg="Invalid MPS settings, nothing was changed: " + "; ".join(errors), errors=errors)
        extra_env = {"CUDA_VISIBLE_DEVICES": ",".join(self.visible_uuids)} if self.visible_uuids else None
        self.control = mps_control(self.module, extra_env=extra_env)

    # Helpers --------------------------------------------------------------------------------------
    def ordinals(self):
        return sorted(self.limits) or [0]

    def snapshot(self):
        try:
            return self.control.snapshot(self.ordinals())
        except MpsControlError as error:
            fail_control(self.module, error, "Cannot read the MPS state in %s" % self.params["pipe_directory"])

    def ensure_directory(self, option):
        path = self.params[option]
        if os.path.isdir(path):
            mode = stat.S_IMODE(os.stat(path).st_mode)
            if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
                self.warnings.append("%s is world-writable without the sticky bit: anyone can replace the MPS "
                                     "sockets in it" % path)
            return
        self.changed = True
        if not self.module.check_mode:
            try:
                os.makedirs(path, self.dir_mode)
                os.chmod(path, self.dir_mode)
            except OSError as error:
                # The first change of a start: when it fails, nothing has been changed yet.
                self.module.fail_json(msg="%s %s cannot be created: %s" % (option, path, error))

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
        try:
            self.control.run("quit -t %d" % self.params["timeout"] if clients else "quit")
        except MpsControlError as error:
            fail_control(self.module, error, "Cannot stop the MPS control daemon in %s" % self.params["pipe_directory"])
        gone = self.control.wait(lambda: not self.control.is_running() and not (pid and pid_alive(pid)),
                                 self.params["timeout"] + 5)
        if not gone:
            self.module.fail_json(msg="The MPS control daemon in %s (pid %s) did not exit within %d s after quit: "
                                      "%s" % (self.params["pipe_directory"], pid, self.params["timeout"] + 5,
                                              self.control.log_tail().strip()))

    def clean_stale_sockets(self):
        """Remove what a quit leaves behind, only when no daemon owns the directory."""
        entries = self.control.pipe_entries()
        if entries["pid_file"] or not entries["sockets"]:
            return
        self.changed = True
        self.removed_sockets = entries["sockets"]
        if self.module.check_mode:
            return
        for name in entries["sockets"] + [RECORD_FILE]:
            try:
                os.unlink(os.path.join(self.params["pipe_directory"], name))
            except OSError:
                pass

    # Start ----------------------------------------------------------------------------------------
    def start(self):
        self.ensure_directory("pipe_directory")
        self.ensure_directory("log_directory")
        self.changed = True
        if self.module.check_mode:
            return
        rc, out, err = self.control.start_daemon()
        if rc != 0:
            hint = " (a daemon process holds the pipe directory but does not answer)" if ALREADY_RUNNING in out + err else ""
            self.module.fail_json(msg="MPS control daemon in %s did not start%s: %s" % (
                self.params["pipe_directory"], hint, (out + err).strip() or self.control.log_tail().strip()),
                cmd=[self.control.binary, "-d"], rc=rc, stdout=out, stderr=err)
        if not self.control.wait(self.control.is_running, self.params["timeout"]):
            self.module.fail_json(msg="MPS control daemon in %s did not answer within %d s: %s; is the NVIDIA driver "
                                      "loaded?" % (self.params["pipe_directory"], self.params["timeout"],
                                                   self.control.log_tail().strip() or "control.log is empty"))

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
        pid = self.control.daemon_pid()
        recorded = self.control.recorded_limits(pid)
        recorded.update(self.limits)
        self.control.record_limits(pid, recorded)

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

    # Run ------------------------------------------------------------------------------------------
    def run(self):
        self.validate()
        before = self.snapshot()
        wanted = self.params["state"]
        started_fresh = False
        if wanted in ("stopped", "restarted"):
            self.stop(before)
            if not self.module.check_mode or not before["running"]:
                self.clean_stale_sockets()
        if wanted in ("started", "restarted"):
            if wanted == "restarted" or not before["running"]:
                self.start()
                started_fresh = True
            else:
                self.check_visible_devices(before)
            self.apply_defaults(None if started_fresh else before)
        after = self.snapshot() if not self.module.check_mode else before
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
        if self.devices is not None:
            result["devices"] = self.devices
        if self.module._diff:
            result["diff"] = {"before": describe(before["running"], before["defaults"]),
                              "after": describe(running, result["defaults"])}
        for warning in self.warnings:
            self.module.warn(warning)
        return result


def describe(running, defaults):
    """The state shown in --diff."""
    return {"state": "running" if running else "stopped",
            "default_active_thread_percentage": defaults.get("active_thread_percentage"),
            "default_pinned_memory_limit": dict(defaults.get("pinned_memory_limit") or {})}


def main():
    module = AnsibleModule(
        argument_spec=mps_argument_spec(
            state=dict(type="str", default="started", choices=["started", "stopped", "restarted"]),
            directory_mode=dict(type="raw", default="0755"),
            visible_devices=dict(type="list", elements="str"),
            default_active_thread_percentage=dict(type="float"),
            default_pinned_memory_limit=dict(type="raw"),
            apply_to_running=dict(type="str", default="report", choices=["report", "restart"]),
            force=dict(type="bool", default=False),
            timeout=dict(type="int", default=30),
        ),
        supports_check_mode=True,
    )
    daemon = MpsDaemon(module)
    module.exit_json(**daemon.result(*daemon.run()))


if __name__ == "__main__":
    main()
