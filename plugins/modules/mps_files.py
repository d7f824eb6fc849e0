#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: mps_files
short_description: Keep root's directories and files of the collection on a host that other users log in to
version_added: 0.4.0
description:
  - The collection's own M(ansible.builtin.file) and M(ansible.builtin.copy) for the places where a path another user
    planted could matter - the client's lib directory and the plan file (role C(gpulab.mps.mps_client)), the metrics
    collector's install directory, its venv, its configuration, its units and node_exporter's textfile directory
    (role C(gpulab.mps.mps_metrics)). The roles use it for every such directory and file.
  - It follows the pipe directory's rules (README, Security). A missing directory is made one component at a time
    with C(mkdir) (which never follows a link), given its mode through a descriptor opened with C(O_NOFOLLOW), and
    checked again. An existing directory must already be trusted - a real directory (not a link), owned by root,
    writable by nobody else, on a way from C(/) that nobody else can change (a link on the way only where root made
    it) - or it is refused, with the reason and the way out. The module never changes the owner or mode of a
    directory it did not make.
  - A file is written through a descriptor of its trusted directory - a new file made with C(O_EXCL|O_NOFOLLOW),
    written, given its mode, then renamed over the name - and only when its content, owner or mode differ. A path
    that is a link or not a regular file is refused, never followed or replaced.
  - Every directory and file is checked before anything changes; one that cannot be used fails the task, naming
    every problem, with nothing changed. Check mode asks the same questions and changes nothing.
  - With O(state=absent) it removes only what the collection made - a file when it starts with its O(files[].marker)
    or when the record O(record) holds its very content (path and SHA-256 of what the module wrote), a directory
    when the record says the module made it (emptied first, or with everything in it when O(directories[].recurse)),
    and then the directories it made above them that are left empty - never through a link. What stays is
    returned, and a file of someone else's is warned about.
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
  state:
    description: V(present) makes the directories and writes the files; V(absent) removes what the collection made.
    type: str
    choices: [present, absent]
    default: present
  directories:
    description:
      - Directories, made (or proved trusted) before the files, parents first; removed after the files, deepest
        first. A file's missing parent directories are made too (mode C(0755)).
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path; letters, digits and C(. _ - + @ /).
        type: str
        required: true
      mode:
        description:
          - Mode of a directory the module makes (C(0755) or C("0755"), as M(ansible.builtin.file) reads it). Group and
            others may not write. An existing directory keeps its own mode.
        type: raw
        default: "0755"
      ancestor_owners:
        description:
          - Users (names or uids), besides root, whose directories and links may lie on the way to this one - on
            Debian, C(/var/lib/prometheus) is the C(prometheus) user's and holds node_exporter's textfile directory.
            The directory itself must still be root's. A name no account has is ignored.
        type: list
        elements: raw
        default: []
      recurse:
        description: With O(state=absent), remove the directory with everything in it (the walk never follows a link).
        type: bool
        default: false
  files:
    description: Files, each written whole.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path; letters, digits and C(. _ - + @ /).
        type: str
        required: true
      content:
        description:
          - The whole content (text, written as UTF-8). Required with O(state=present). A role passes a file of its
            own with C(lookup('ansible.builtin.file', NAME, rstrip=false)) (the lookup strips the final newline
            otherwise).
        type: str
      mode:
        description: Its mode (C(0644) or C("0644")); group and others may not write.
        type: raw
        default: "0644"
      marker:
        description:
          - What the file's content starts with when the collection wrote it (its first comment line); with
            O(state=absent) a file that starts with it is removed even without a record.
        type: str
      ancestor_owners:
        description: As O(directories[].ancestor_owners), for the file's directory.
        type: list
        elements: raw
        default: []
  record:
    description:
      - The record of what the module wrote and made (JSON, root's, 0600), which O(state=absent) proves ownership
        with. Use the plan's state directory - C({{ preflight_mps_plan.state_directory }}/files.json). Default
        C(/var/lib/gpulab-mps/files.json) for root.
    type: str
author:
  - gpulab.mps contributors (@gpulab)
"""

EXAMPLES = r"""
- name: Install the collection's client and the plan it reads
  gpulab.mps.mps_files:
    record: "{{ preflight_mps_plan.state_directory }}/files.json"
    directories:
      - path: "{{ preflight_mps_plan.files.lib_directory }}"
      - path: "{{ preflight_mps_plan.files.config_directory }}"
    files:
      - path: "{{ preflight_mps_plan.files.lib_directory }}/gpulab_mps.py"
        content: "{{ lookup('ansible.builtin.file', 'gpulab_mps.py', rstrip=false) }}"
      - path: "{{ preflight_mps_plan.files.plan_file }}"
        content: "{{ preflight_mps_plan | gpulab.mps.mps_plan_file }}"

- name: node_exporter's textfile directory, below the prometheus user's directory on Debian
  gpulab.mps.mps_files:
    directories:
      - path: /var/lib/prometheus/node-exporter
        ancestor_owners: [prometheus]

- name: Remove the collector's venv (made by this module, then filled by pip)
  gpulab.mps.mps_files:
    state: absent
    record: "{{ preflight_mps_plan.state_directory }}/files.json"
    directories:
      - path: /usr/local/lib/gpulab-mps/venv
        recurse: true
"""

RETURN = r"""
directories:
  description: Each directory, whether it was (would be) made or removed, and why one stayed.
  returned: always
  type: list
  elements: dict
  sample: [{path: /usr/local/lib/gpulab-mps, changed: true, created: [/usr/local/lib/gpulab-mps], kept: null}]
files:
  description: Each file, whether it was (would be) written or removed, and why one stayed.
  returned: always
  type: list
  elements: dict
  sample: [{path: /etc/gpulab-mps/plan.json, changed: true, kept: null}]
diff:
  description: Each file written or removed, before and after (diff mode).
  returned: when diff mode is on
  type: list
  elements: dict
"""

import os
import pwd

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpulab.mps.plugins.module_utils import _files
from ansible_collections.gpulab.mps.plugins.module_utils._files import FilesError, Record
from ansible_collections.gpulab.mps.plugins.module_utils._mps_control import default_state_directory
from ansible_collections.gpulab.mps.plugins.module_utils._trust import normalize_path, parse_mode


def uids(names, where, errors):
    """The uids of `names` (user names or uids); a name no account has is left out."""
    found = []
    for name in names or []:
        if isinstance(name, bool):
            errors.append("%s.ancestor_owners: %r is not a user" % (where, name))
        elif isinstance(name, int) or (isinstance(name, str) and name.isdigit()):
            found.append(int(name))
        else:
            try:
                found.append(pwd.getpwnam(str(name)).pw_uid)
            except KeyError:
                pass
    return found


def checked_items(params, errors):
    """The directories and files with absolute paths, modes and owners resolved; problems added to errors."""
    present = params["state"] == "present"
    directories, files = [], []
    for number, item in enumerate(params["directories"]):
        where = "directories[%d]" % number
        path, error = normalize_path(where + ".path", item["path"])
        try:
            mode = parse_mode(item["mode"])
            if mode & 0o022:
                raise ValueError("%04o lets group or others write: the collection makes no such directory" % mode)
        except ValueError as exc:
            errors.append("%s.mode: %s" % (where, exc))
            mode = None
        if error:
            errors.append(error)
            continue
        directories.append({"path": path, "mode": mode, "owners": uids(item["ancestor_owners"], where, errors),
                            "recurse": item["recurse"]})
    for number, item in enumerate(params["files"]):
        where = "files[%d]" % number
        path, error = normalize_path(where + ".path", item["path"])
        if error:
            errors.append(error)
            continue
        if present and item["content"] is None:
            errors.append("%s (%s): content is required with state present" % (where, path))
        try:
            mode = parse_mode(item["mode"])
            if mode & 0o022:
                raise ValueError("%04o lets group or others write: the collection writes no such file" % mode)
        except ValueError as exc:
            errors.append("%s.mode: %s" % (where, exc))
            mode = None
        files.append({"path": path, "mode": mode, "content": item["content"], "marker": item["marker"],
                      "owners": uids(item["ancestor_owners"], where, errors)})
    paths = [d["path"] for d in directories] + [f["path"] for f in files]
    errors.extend("%s is given twice" % p for p in sorted(set(p for p in paths if paths.count(p) > 1)))
    return directories, files


def problems_of(directories, files):
    """Why a directory or file cannot be used, for every one, before anything changes."""
    problems = [_files.directory_problem(d["path"], d["owners"]) for d in directories]
    problems += [_files.file_problem(f["path"], f["owners"]) for f in files]
    return [p for p in problems if p]


def diff_of(path, before, after):
    return {"before_header": path, "after_header": path, "before": before or "", "after": after or ""}


def present(module, record, directories, files):
    done_directories, done_files, diffs = [], [], []
    for item in sorted(directories, key=lambda d: d["path"].count("/")):
        done = _files.ensure_directory(item["path"], item["mode"], item["owners"], check_mode=module.check_mode)
        for made in done["created"] if not module.check_mode else []:
            record.note_directory(made)
        done_directories.append(dict(done, kept=None))
    for item in files:
        content = item["content"].encode("utf-8")
        done = _files.write_file(item["path"], content, item["mode"], item["owners"], check_mode=module.check_mode)
        for made in done["created"] if not module.check_mode else []:
            record.note_directory(made)
        record.note(item["path"], content)
        if done["changed"]:
            diffs.append(diff_of(item["path"], done["before"], done["after"]))
        done_files.append({"path": item["path"], "changed": done["changed"], "kept": None})
    return done_directories, done_files, diffs


def absent(module, record, directories, files):
    done_directories, done_files, diffs = [], [], []
    for item in files:
        done = _files.remove_file(item["path"], marker=item["marker"], record=record, ancestor_owners=item["owners"],
                                  check_mode=module.check_mode)
        if done["kept"]:
            module.warn(done["kept"])
        if done["changed"]:
            diffs.append(diff_of(item["path"], done["before"], ""))
        done_files.append({"path": item["path"], "changed": done["changed"], "kept": done["kept"]})
    for item in sorted(directories, key=lambda d: -d["path"].count("/")):
        if os.path.lexists(item["path"]) and not record.made(item["path"]):
            done_directories.append({"path": item["path"], "changed": False,
                                     "kept": "%s was not made by the collection: it stays" % item["path"]})
            continue
        done = _files.remove_directory(item["path"], recurse=item["recurse"], ancestor_owners=item["owners"],
                                       check_mode=module.check_mode)
        if done["changed"] and not module.check_mode:
            record.forget_directory(item["path"])
        done_directories.append(done)
    if not module.check_mode:
        done_directories.extend(remove_emptied_parents(record, [d["path"] for d in done_directories + done_files
                                                                if d["changed"]]))
    return done_directories, done_files, diffs


def remove_emptied_parents(record, removed):
    """The directories the collection made above what was removed, now empty: removed too, deepest first."""
    done, candidates = [], set()
    for path in removed:
        parent = os.path.dirname(path)
        while parent != "/" and record.made(parent):
            candidates.add(parent)
            parent = os.path.dirname(parent)
    for path in sorted(candidates, key=lambda p: -p.count("/")):
        if os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path):
            result = _files.remove_directory(path)
            if result["changed"]:
                record.forget_directory(path)
                done.append(result)
    return done


def main():
    owners = dict(type="list", elements="raw", default=[])
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", default="present", choices=["present", "absent"]),
            directories=dict(type="list", elements="dict", default=[], options=dict(
                path=dict(type="str", required=True), mode=dict(type="raw", default="0755"),
                ancestor_owners=owners, recurse=dict(type="bool", default=False))),
            files=dict(type="list", elements="dict", default=[], options=dict(
                path=dict(type="str", required=True), content=dict(type="str"), mode=dict(type="raw", default="0644"),
                marker=dict(type="str"), ancestor_owners=owners)),
            record=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    errors = []
    directories, files = checked_items(p, errors)
    record_path, error = normalize_path("record", p["record"] or os.path.join(default_state_directory(), "files.json"))
    if error:
        errors.append(error)
    if errors:
        module.fail_json(msg="Invalid directories or files, nothing was changed: " + "; ".join(errors), errors=errors)
    problems = problems_of(directories, files) if p["state"] == "present" else []
    try:
        record = Record(record_path)
    except FilesError as exc:
        problems.append(str(exc))
    if problems:
        module.fail_json(msg="Refusing the collection's directories and files, nothing was changed: "
                         + "; ".join(problems), errors=problems)
    try:
        if p["state"] == "present":
            done_directories, done_files, diffs = present(module, record, directories, files)
        else:
            done_directories, done_files, diffs = absent(module, record, directories, files)
        record.save(check_mode=module.check_mode)
    except (FilesError, OSError) as exc:
        module.fail_json(msg="Cannot keep the collection's directories and files: %s" % exc)
    result = dict(changed=any(d["changed"] for d in done_directories + done_files), directories=done_directories,
                  files=done_files)
    if module._diff:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
