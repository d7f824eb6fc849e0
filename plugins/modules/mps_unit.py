#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: mps_unit
short_description: Install the systemd files of the host's MPS control daemon and start its service, in one call
version_added: 0.1.0
description:
  - Renders the host daemon's systemd files from the host's plan (C(preflight_mps_plan), made by
    M(gpulab.mps.mps_plan)) - its unit, its defaults drop-in and its C(tmpfiles.d) entry - writes those whose content,
    owner or mode differ, reloads systemd when one changed, then enables and starts the service when it is not.
  - Every value of the plan that goes into a file passes the collection's check for that file format (unit names,
    paths and words of C(Exec*=) and C(Environment=) lines, C(tmpfiles.d) fields, comments); a value a format cannot
    carry is refused, naming it, before anything is written.
  - The unit - C(Type=forking); C(Environment=) lines only from C(plan.daemon.environment); C(ExecStartPre=) runs
    C(systemd-tmpfiles --create) on the entry, then the collection's entry point C(gpulab_mps.py check-directories)
    (installed by the role C(gpulab.mps.mps_client)); C(ExecStart=) the control binary with C(-d) (and C(-M) when
    planned); C(ExecStop=) C(gpulab_mps.py --timeout N stop); no C(PIDFile=) (MPS makes its pid file writable by
    every user, so systemd takes the forked daemon's PID itself); C(Restart=on-failure). The drop-in runs
    C(gpulab_mps.py apply-defaults) after every start when the plan has defaults. No shell line reaches MPS.
  - Files are written and removed as the collection's C(_files) does - in trusted directories only (root's, not
    writable by others, no link on the way that another user made), never through a link, atomically; a directory
    that is not trusted is refused and never chowned or chmodded.
  - Returns the service's state as systemd reports it after that (main PID, start time, restart count), so that
    a caller can tell later whether the same daemon still runs.
  - A running service is not restarted when its files change (that would cut off the CUDA clients attached
    to the MPS daemon); the module warns that the new unit takes effect at the next restart.
  - With O(state=absent) it removes the three files, only those the collection wrote (their first line says so),
    and the drop-in directory when empty, and reloads systemd; stopping and disabling the service is the caller's.
extends_documentation_fragment:
  - gpulab.mps.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    support: full
options:
  plan:
    description:
      - The host's plan, the fact C(preflight_mps_plan) set by the role C(gpulab.mps.preflight). Read - C(daemon)
        (C(service_name), C(environment), C(multiuser_server), the defaults), C(files) (C(unit_directory),
        C(tmpfiles_directory), C(lib_directory), C(plan_file)), C(host.python), C(control_binary), and the pipe and
        log directories.
    type: dict
    required: true
  state:
    description: V(present) installs and starts the service; V(absent) removes its files (after the caller stopped it).
    type: str
    choices: [present, absent]
    default: present
  timeout:
    description:
      - Seconds each C(systemctl) call may take, and each call of the entry point in the unit; C(ExecStop=) forces the
        MPS servers down after this many seconds of waiting for their clients (1 to 3600).
    type: int
    default: 30
requirements:
  - systemd on the target
  - the collection's client on the target (role C(gpulab.mps.mps_client)) before the service starts
author:
  - gpulab.mps contributors (@gpulab)
"""

EXAMPLES = r"""
- name: Install the collection's client and the plan the unit reads
  ansible.builtin.include_role:
    name: gpulab.mps.mps_client

- name: Install nvidia-mps.service from the host's plan and start it
  gpulab.mps.mps_unit:
    plan: "{{ preflight_mps_plan }}"
    timeout: 30
  register: unit

- name: Remove the unit files (the service stopped first)
  gpulab.mps.mps_unit:
    plan: "{{ preflight_mps_plan }}"
    state: absent
"""

RETURN = r"""
files_changed:
  description: The files that were (in check mode, would be) written, or removed with O(state=absent).
  returned: always
  type: list
  elements: str
  sample: [/etc/systemd/system/nvidia-mps.service]
files_kept:
  description: With O(state=absent), the files that stay because the collection did not write them, and why.
  returned: always
  type: list
  elements: str
reloaded:
  description: Whether systemd was (would be) reloaded.
  returned: always
  type: bool
enabled:
  description: Whether the service was (would be) enabled by this run.
  returned: always
  type: bool
started:
  description: Whether the service was (would be) started by this run.
  returned: always
  type: bool
status:
  description:
    - The service as systemd shows it at the end (in check mode, as it is now). C(MainPID) is the daemon's PID,
      C(ExecMainStartTimestampMonotonic) when it started (microseconds), C(NRestarts) how often systemd restarted it.
      Empty with O(state=absent).
  returned: always
  type: dict
  sample: {ActiveState: active, SubState: running, UnitFileState: enabled, LoadState: loaded, MainPID: 761,
           ExecMainStartTimestampMonotonic: 3021554871, NRestarts: 0}
identity:
  description:
    - The PID and start time (clock ticks since boot) of the service's main process, the MPS control daemon, as
      M(gpulab.mps.mps_info) returns them; null when none runs. Equal pairs mean the same daemon.
  returned: always
  type: list
  elements: int
  sample: [761, 290221]
diff:
  description: Each file written or removed, before and after (diff mode).
  returned: when diff mode is on
  type: list
  elements: dict
"""

import os
import stat

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpulab.mps.plugins.module_utils import _command, _files
from ansible_collections.gpulab.mps.plugins.module_utils._command import MAX_TIMEOUT, CommandError, CommandTimeout
from ansible_collections.gpulab.mps.plugins.module_utils._files import FilesError
from ansible_collections.gpulab.mps.plugins.module_utils._formats import FormatError
from ansible_collections.gpulab.mps.plugins.module_utils._plan import plan_problems
from ansible_collections.gpulab.mps.plugins.module_utils._trust import process_start
from ansible_collections.gpulab.mps.plugins.module_utils._unit_files import (
    MARKER, client_files, daemon_files, daemon_paths)

PROPERTIES = ("LoadState", "ActiveState", "SubState", "UnitFileState", "MainPID", "ExecMainStartTimestampMonotonic",
              "NRestarts")
NUMBERS = ("MainPID", "ExecMainStartTimestampMonotonic", "NRestarts")
MODE = 0o644


def parse_show(text):
    """systemctl show --property=... output (KEY=VALUE lines) as a dict, numbers as int."""
    status = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in PROPERTIES:
            status[key] = int(value) if key in NUMBERS and value.isdigit() else value
    return status


class Unit(object):
    def __init__(self, module, name):
        self.module = module
        self.name = name + ".service"
        self.timeout = module.params["timeout"]
        self.systemctl = module.get_bin_path("systemctl", required=True)

    def call(self, *args):
        argv = [self.systemctl] + list(args)
        try:
            rc, out, err = _command.run_bounded(argv, self.timeout)
        except (CommandError, CommandTimeout) as error:
            self.module.fail_json(msg=str(error), **error.details())
        return rc, out, err

    def checked(self, what, *args):
        rc, out, err = self.call(*args)
        if rc != 0:
            self.module.fail_json(msg="Unable to %s service %s: %s" % (what, self.name[:-8], (err or out).strip()),
                                  cmd=[self.systemctl] + list(args), rc=rc, stdout=out, stderr=err)
        return out

    def status(self):
        return parse_show(self.checked("read", "show", self.name, "--property=" + ",".join(PROPERTIES)))


def diff_of(done, after=None):
    return {"before_header": done["path"], "after_header": done["path"], "before": done.get("before") or "",
            "after": done["after"] if after is None else after}


def present(module, plan, files):
    """Write the files (every one checked first), reload, enable, start: the result."""
    problems = [p for p in (_files.file_problem(path) for path, _text in files) if p]
    # The unit runs the collection's entry point with the plan file, as root: both must lie in trusted directories,
    # and be there before it starts (in check mode, the role that installs them has not run for real).
    for path in client_files(plan):
        problem = _files.file_problem(path)
        if problem is None and not module.check_mode and not _regular(path):
            problem = "%s is missing: run the role gpulab.mps.mps_client first (mps_host does)" % path
        if problem:
            problems.append(problem)
    if problems:
        module.fail_json(msg="Refusing to install the %s service, nothing was changed: %s"
                         % (plan["daemon"]["service_name"], "; ".join(problems)), errors=problems)
    changed_files, diffs = [], []
    for path, text in files:
        try:
            done = _files.write_file(path, text.encode("utf-8"), 0o644, check_mode=module.check_mode)
        except (FilesError, OSError) as error:
            module.fail_json(msg="Cannot write %s: %s" % (path, error), files_changed=changed_files)
        if done["changed"]:
            changed_files.append(path)
            diffs.append(diff_of(done))
    unit = Unit(module, plan["daemon"]["service_name"])
    reloaded = bool(changed_files)
    if reloaded and not module.check_mode:
        # Reload now: the service must start from the new files in this run.
        unit.checked("reload systemd for", "daemon-reload")
    before = unit.status()
    enable = before.get("UnitFileState") != "enabled"
    start = before.get("ActiveState") != "active"
    if not module.check_mode:
        if enable:
            unit.checked("enable", "enable", unit.name)
        if start:
            unit.checked("start", "start", unit.name)
    status = unit.status() if (enable or start) and not module.check_mode else before
    if changed_files and not start and before.get("ActiveState") == "active":
        module.warn("%s was running when its files changed (%s): it keeps its old settings until it restarts "
                    "(systemctl restart %s when no CUDA clients run)." % (unit.name, ", ".join(changed_files), unit.name))
    seen = process_start(status["MainPID"]) if status.get("MainPID") else None
    return dict(changed=bool(changed_files) or enable or start, files_changed=changed_files, files_kept=[],
                reloaded=reloaded, enabled=enable, started=start, status=status,
                identity=[status["MainPID"], seen[1]] if seen else None), diffs


def _regular(path):
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def absent(module, plan):
    """Remove the collection's files of the service (the caller stopped it), then reload systemd."""
    paths = daemon_paths(plan)
    removed, kept, diffs = [], [], []
    try:
        for key in ("unit", "dropin", "tmpfiles"):
            done = _files.remove_file(paths[key], marker=MARKER, check_mode=module.check_mode)
            if done["changed"]:
                removed.append(done["path"])
                diffs.append(diff_of(done, after=""))
            if done["kept"]:
                kept.append(done["kept"])
                module.warn(done["kept"])
        if removed or module.check_mode:
            done = _files.remove_directory(paths["dropin_directory"], check_mode=module.check_mode)
            if done["changed"] and not module.check_mode:
                removed.append(done["path"])
    except (FilesError, OSError) as error:
        module.fail_json(msg="Cannot remove the %s service's files: %s" % (plan["daemon"]["service_name"], error),
                         files_changed=removed)
    reloaded = bool(removed)
    if reloaded and not module.check_mode:
        Unit(module, plan["daemon"]["service_name"]).checked("reload systemd for", "daemon-reload")
    return dict(changed=bool(removed), files_changed=removed, files_kept=kept, reloaded=reloaded, enabled=False,
                started=False, status={}, identity=None), diffs


def main():
    module = AnsibleModule(
        argument_spec=dict(
            plan=dict(type="dict", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            timeout=dict(type="int", default=30),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if not 1 <= p["timeout"] <= MAX_TIMEOUT:
        module.fail_json(msg="timeout must be 1 to %d seconds, not %d" % (MAX_TIMEOUT, p["timeout"]))
    problems = plan_problems(p["plan"])
    if problems:
        module.fail_json(msg="; ".join(problems))
    plan = p["plan"]
    try:
        files = daemon_files(plan, p["timeout"]) if p["state"] == "present" else None
        daemon_paths(plan)
    except FormatError as error:
        module.fail_json(msg="The host's plan cannot be written into the MPS service's files, nothing was changed: %s"
                         % error)
    if p["state"] == "present":
        result, diffs = present(module, plan, files)
    else:
        result, diffs = absent(module, plan)
    if module._diff:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
