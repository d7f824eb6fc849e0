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
  - One task for every class, written atomically (a new file, then os.replace) and only when its content differs.
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
"""

import os
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpulab.mps.plugins.module_utils._qos import FILE_MARKER, env_file_text
from ansible_collections.gpulab.mps.plugins.module_utils._trust import (
    TrustError, directory_problem, ensure_directory, normalize_path, read_small_file)


def ours(path):
    """Content of a class file the collection wrote at path (a regular file, not a link, with its marker), or None."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
    except OSError:
        return None
    text = read_small_file(path, limit=1 << 16)
    return text if text is not None and text.startswith(FILE_MARKER) else None


def write(directory, name, text):
    fd, temp = tempfile.mkstemp(prefix="." + name + ".", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            os.fchmod(handle.fileno(), 0o644)
        os.replace(temp, os.path.join(directory, name))
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


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
    classes = qos.get("classes") or {} if module.params["state"] == "present" else {}
    problem = directory_problem(directory, os.geteuid(), creatable=True)
    if problem:
        module.fail_json(msg="Refusing to write the QoS class files in %s: %s" % (directory, problem))
    wanted = dict(("%s.env" % name, env_file_text(name, values)) for name, values in sorted(classes.items()))
    present = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    current = dict((n, ours(os.path.join(directory, n))) for n in present if n.endswith(".env"))
    current = dict((n, t) for n, t in current.items() if t is not None)
    written = [os.path.join(directory, n) for n, t in sorted(wanted.items()) if current.get(n) != t]
    removed = [os.path.join(directory, n) for n in sorted(current) if n not in wanted]
    if not module.check_mode and (written or removed):
        try:
            if written:
                ensure_directory(directory, os.geteuid(), 0o755)
            for path in written:
                write(directory, os.path.basename(path), wanted[os.path.basename(path)])
            for path in removed:
                os.unlink(path)
        except (TrustError, OSError) as exc:
            module.fail_json(msg="Cannot keep the QoS class files in %s: %s" % (directory, exc))
    result = dict(changed=bool(written or removed), written=written, removed=removed)
    if module._diff:
        result["diff"] = {"before": {"files": sorted(current)},
                          "after": {"files": sorted(set(current) - set(os.path.basename(p) for p in removed)
                                                    | set(wanted))}}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
