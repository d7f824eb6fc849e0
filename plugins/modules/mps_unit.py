#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: mps_unit
short_description: Install the systemd unit files of the MPS control daemon and start its service, in one call
version_added: 0.1.0
description:
  - Writes the files of a systemd service (its unit, drop-ins, a C(tmpfiles.d) entry) when their content, owner
    or mode differ, reloads systemd when one changed, then enables and starts the service when it is not.
  - Returns the service's state as systemd reports it after that (main PID, start time, restart count), so that
    a caller can tell later whether the same daemon still runs.
  - A running service is not restarted when its files change (that would cut off the CUDA clients attached
    to the MPS daemon); the module warns that the new unit takes effect at the next restart.
  - One module call for what the C(template) and C(systemd_service) modules do in five; the role
    C(gpulab.mps.mps_host) renders the files on the controller and passes them here.
  - A file path that is a symbolic link is refused (a masked unit links to C(/dev/null)).
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
  name:
    description: Name of the service, without C(.service).
    type: str
    default: nvidia-mps
  files:
    description:
      - The service's files, each written owned by the module's user (root) with mode C(0644). Missing parent
        directories are made with mode C(0755).
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description: Absolute path of the file.
        type: path
        required: true
      content:
        description: Its content.
        type: str
        required: true
  timeout:
    description: Seconds each C(systemctl) call may take (1 to 3600).
    type: int
    default: 30
requirements:
  - systemd on the target
author:
  - gpulab.mps contributors (@gpulab)
"""

EXAMPLES = r"""
- name: Install nvidia-mps.service and start it
  gpulab.mps.mps_unit:
    name: nvidia-mps
    files:
      - path: /etc/systemd/system/nvidia-mps.service
        content: "{{ lookup('ansible.builtin.template', 'nvidia-mps.service.j2') }}"
  register: unit
"""

RETURN = r"""
files_changed:
  description: The files that were (in check mode, would be) written.
  returned: always
  type: list
  elements: str
  sample: [/etc/systemd/system/nvidia-mps.service]
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
"""

import os
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpulab.mps.plugins.module_utils import _command
from ansible_collections.gpulab.mps.plugins.module_utils._command import MAX_TIMEOUT, CommandError, CommandTimeout
from ansible_collections.gpulab.mps.plugins.module_utils._trust import process_start

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


def file_state(path):
    """(content bytes or None, needs owner/mode fix) of a unit file; raises ValueError for a symlink or non-file."""
    try:
        st = os.lstat(path)
    except OSError:
        return None, False
    if stat.S_ISLNK(st.st_mode):
        raise ValueError("%s is a symbolic link (a masked unit links to /dev/null): remove it or unmask the unit" % path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("%s exists and is not a regular file" % path)
    with open(path, "rb") as handle:
        content = handle.read()
    return content, stat.S_IMODE(st.st_mode) != MODE or st.st_uid != os.geteuid()


class Unit(object):
    def __init__(self, module):
        self.module = module
        self.name = module.params["name"] + ".service"
        self.timeout = module.params["timeout"]
        self.systemctl = module.get_bin_path("systemctl", required=True)

    def call(self, *args):
        argv = [self.systemctl] + list(args)
        try:
            rc, out, err = _command.run_bounded(argv, self.timeout)
        except CommandError as error:
            self.module.fail_json(msg=str(error), **error.details())
        except CommandTimeout as error:
            self.module.fail_json(msg=str(error), **error.details())
        return rc, out, err

    def checked(self, what, *args):
        rc, out, err = self.call(*args)
        if rc != 0:
            self.module.fail_json(msg="Unable to %s service %s: %s" % (what, self.module.params["name"], (err or out).strip()),
                                  cmd=[self.systemctl] + list(args), rc=rc, stdout=out, stderr=err)
        return out

    def status(self):
        return parse_show(self.checked("read", "show", self.name, "--property=" + ",".join(PROPERTIES)))

    def write(self, path, content):
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o755)
        fd, temp = tempfile.mkstemp(dir=directory, prefix=".gpulab-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            self.module.atomic_move(temp, path)
            # atomic_move keeps an existing file's owner and mode: set ours.
            os.chown(path, os.geteuid(), os.getegid())
            os.chmod(path, MODE)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", default="nvidia-mps"),
            files=dict(type="list", elements="dict", required=True,
                       options=dict(path=dict(type="path", required=True), content=dict(type="str", required=True))),
            timeout=dict(type="int", default=30),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if not 1 <= p["timeout"] <= MAX_TIMEOUT:
        module.fail_json(msg="timeout must be 1 to %d seconds, not %d" % (MAX_TIMEOUT, p["timeout"]))
    unit = Unit(module)
    changed_files, diffs = [], []
    for item in p["files"]:
        path, content = item["path"], item["content"].encode("utf-8")
        if not os.path.isabs(path):
            module.fail_json(msg="files: %s is not an absolute path" % path)
        try:
            current, fix = file_state(path)
        except ValueError as error:
            module.fail_json(msg=str(error))
        if current == content and not fix:
            continue
        changed_files.append(path)
        diffs.append({"before_header": path, "after_header": path,
                      "before": (current or b"").decode("utf-8", "replace"), "after": item["content"]})
        if not module.check_mode:
            try:
                unit.write(path, content)
            except (IOError, OSError) as error:
                module.fail_json(msg="Cannot write %s: %s" % (path, error), files_changed=changed_files)

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
    result = dict(changed=bool(changed_files) or enable or start, files_changed=changed_files, reloaded=reloaded,
                  enabled=enable, started=start, status=status, identity=[status["MainPID"], seen[1]] if seen else None)
    if module._diff:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
