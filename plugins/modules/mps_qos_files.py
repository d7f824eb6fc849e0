#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: mps_qos_files
short_description: Keep the environment files of the host's MPS QoS classes
version_added: 0.2.0
description:
  - Writes one environment file per QoS class of the host's plan (C(preflight_mps_plan.qos), made by
    M(gpulab.mps.mps_plan)), root's and 0644, for the clients that run on the host - a systemd service
    (C(EnvironmentFile=)) or a job script (C(set -a; . FILE; set +a)) runs in its class.
  - Removes the files of classes no longer planned (all of them with O(state=absent)) - only the files the collection
    wrote (their first line says so), never a link, never a file someone else put there.
  - One task for every class, written atomically (a new file made with C(O_EXCL|O_NOFOLLOW) in the directory, then
    renamed over the name) and only when its content or mode differs.
  - The directory follows the pipe directory's rules (README, Security) - a missing one is made one component at a
    time; an existing one must be root's real directory, writable by nobody else, on a way nobody else can change;
    anything else is refused, naming the path, and never chowned or chmodded.
  - Every class name must be a plain file name and every line of a file passes the collection's env file format
    (comments one line of printable text, C(NAME=VALUE) with values a shell reads literally) - checked for every
    class before anything is written; the plan (M(gpulab.mps.mps_plan)) already refuses what would fail here.
extends_documentation_fragment:
  - gpulab.mps.attributes
options:
  qos:
    description: The QoS part of the host's plan, C(preflight_mps_plan.qos) (C(directory) and C(classes)).
    type: dict
    required: true
  state:
    description: V(present) keeps a file for every planned class; V(absent) removes the collection's files.
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    support: full
author:
  - gpulab.mps contributors (@gpulab)
"""

EXAMPLES = r"""
- name: Keep the QoS class files of the plan
  gpulab.mps.mps_qos_files:
    qos: "{{ preflight_mps_plan.qos }}"
"""

RETURN = r"""
written:
  description: The class files written (or, in check mode, that would be).
  returned: always
  type: list
  elements: str
  sample: [/etc/gpulab-mps/qos/batch.env]
removed:
  description: The collection's class files removed (or, in check mode, that would be).
  returned: always
  type: list
  elements: str
  sample: [/etc/gpulab-mps/qos/bulk.env]
diff:
  description: Each file written or removed, before and after (diff mode).
  returned: when diff mode is on
  type: list
  elements: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpulab.mps.plugins.module_utils import _files
from ansible_collections.gpulab.mps.plugins.module_utils._files import FilesError
from ansible_collections.gpulab.mps.plugins.module_utils._qos import (
    FILE_MARKER, ClassFileError, class_file_name, env_file_text)
from ansible_collections.gpulab.mps.plugins.module_utils._trust import normalize_path


def class_files(directory, classes):
    """({file name: text}, errors) of the planned classes: every name a plain file name, every line through
    _formats (the plan passed on to this module may have been changed on its way)."""
    wanted, errors = {}, []
    if not isinstance(classes, dict):
        return {}, ["qos.classes must be a dict from class name to its values, got %r" % (classes,)]
    for name in sorted(classes, key=str):
        values = classes[name]
        try:
            if not isinstance(values, dict):
                raise ClassFileError("QoS class %r must be a dict of its values, got %r" % (name, values))
            wanted[class_file_name(name)] = env_file_text(name, values, directory)
        except ClassFileError as error:
            errors.append(str(error))
    return wanted, errors


def main():
    module = AnsibleModule(
        argument_spec=dict(qos=dict(type="dict", required=True),
                           state=dict(type="str", default="present", choices=["present", "absent"])),
        supports_check_mode=True,
    )
    qos = module.params["qos"]
    directory, error = normalize_path("qos.directory", qos.get("directory"))
    if error:
        module.fail_json(msg=error)
    classes = (qos.get("classes") or {}) if module.params["state"] == "present" else {}
    # Everything is checked before anything changes: the names and lines of every class, the directory, each path.
    wanted, errors = class_files(directory, classes)
    if errors:
        module.fail_json(msg="Refusing to write the QoS class files in %s, nothing was changed: %s"
                         % (directory, "; ".join(errors)), errors=errors)
    problems = [p for p in [_files.directory_problem(directory)] + [
        _files.file_problem(os.path.join(directory, name)) for name in sorted(wanted)] if p]
    if problems:
        module.fail_json(msg="Cannot keep the QoS class files in %s, nothing was changed: %s"
                         % (directory, "; ".join(problems)), errors=problems)
    present = sorted(n for n in os.listdir(directory) if n.endswith(".env")) if os.path.isdir(directory) else []
    written, removed, diffs = [], [], []
    try:
        for name, text in sorted(wanted.items()):
            done = _files.write_file(os.path.join(directory, name), text.encode("utf-8"), 0o644,
                                     check_mode=module.check_mode)
            if done["changed"]:
                written.append(done["path"])
                diffs.append({"before_header": done["path"], "after_header": done["path"],
                              "before": done["before"] or "", "after": done["after"]})
        for name in present:
            if name in wanted:
                continue
            done = _files.remove_file(os.path.join(directory, name), marker=FILE_MARKER, check_mode=module.check_mode)
            if done["changed"]:
                removed.append(done["path"])
                diffs.append({"before_header": done["path"], "after_header": done["path"],
                              "before": done["before"] or "", "after": ""})
    except (FilesError, OSError) as exc:
        module.fail_json(msg="Cannot keep the QoS class files in %s: %s" % (directory, exc), written=written,
                         removed=removed)
    result = dict(changed=bool(written or removed), written=written, removed=removed)
    if module._diff:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
