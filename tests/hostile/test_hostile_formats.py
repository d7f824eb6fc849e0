# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 20, values into file formats: a value that goes into a systemd unit, a tmpfiles.d entry or an env file a shell
sources is validated or escaped for that format, before anything is written.

What each reader takes for a line: sh splits on \\n; systemd (units, tmpfiles.d, EnvironmentFile=) ends a line at
\\n or \\r. So a \\n or a \\r in a value must never become a line of its own: checked here by reading the written files
the way those readers do, and by sourcing each QoS class file with `sh -c 'set -a; . FILE'` to see that no command
ran. The service name goes through the roles (ansible-playbook on localhost, a recording systemctl); the QoS classes
through mps_plan and mps_qos_files, as the mps_host role calls them.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys

import pytest

import _hostile as h

pytestmark = h.NEEDS_ROOT

PLAY = """- name: The host's plan, then the MPS daemon under systemd (what site.yml runs for them)
  hosts: gpu_hosts
  gather_facts: false
  roles:
    - role: gpulab.mps.preflight
    - role: gpulab.mps.mps_host
"""


def lines_as_systemd_reads(text):
    return [line for line in re.split(r"[\r\n]", text) if line.strip()]


def fake_systemctl(folder):
    bindir = os.path.join(folder, "bin")
    os.makedirs(bindir, exist_ok=True)
    calls = os.path.join(folder, "systemctl.calls")
    h.script(os.path.join(bindir, "systemctl"), 'echo "$*" >> %s\necho "System has not been booted with systemd" >&2\n'
             'exit 1\n' % calls)
    return bindir, calls


SERVICE_NAMES = {"newline": "nvidia-mps\nd {pwned} 0777 root root -",
                 "carriage-return": "nvidia-mps\rd {pwned} 0777 root root -",
                 "parent-path": "../gpulab-escape"}


@pytest.mark.parametrize("case", sorted(SERVICE_NAMES))
def test_a_bad_service_name_is_refused_before_anything_is_written(lab, root_dir, sticky, tmp_path, case):
    """mps_host_service_name goes into the tmpfiles.d entry and the unit's paths: with a line break, the rest of it is
    a tmpfiles.d line of its own, that root's systemd-tmpfiles applies at boot (here: a directory for everyone); with
    ../ the unit is written outside the unit directory."""
    units, tmpfiles = os.path.join(root_dir, "system"), os.path.join(root_dir, "tmpfiles.d")
    os.mkdir(units, 0o755)
    os.mkdir(tmpfiles, 0o755)
    pwned = os.path.join(sticky, "pwned")
    name = SERVICE_NAMES[case].format(pwned=pwned)
    before = h.tree(root_dir)
    bindir, calls = fake_systemctl(str(tmp_path))
    play, inventory = os.path.join(str(tmp_path), "host.yml"), os.path.join(str(tmp_path), "hosts.yml")
    with open(play, "w") as handle:
        handle.write(PLAY)
    with open(inventory, "w") as handle:
        handle.write("gpu_hosts:\n  hosts:\n    localhost:\n")
    done = h.playbook(play, inventory, {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "preflight_control_binary": h.CONTROL, "mps_host_pipe_directory": lab["pipe"],
        "mps_host_log_directory": lab["log"], "mps_host_state_directory": lab["state"],
        "mps_host_service_manager": "systemd", "mps_host_unit_directory": units,
        "mps_host_tmpfiles_directory": tmpfiles, "mps_host_service_name": name,
        "gpulab_mps_qos_directory": os.path.join(root_dir, "qos")},
        str(tmp_path), env=dict(os.environ, PATH=bindir + os.pathsep + os.environ["PATH"]))
    out = h.oneline(done.stdout)
    written = {}
    for folder, _dirs, files in list(os.walk(units)) + list(os.walk(tmpfiles)):
        for entry in files:
            with open(os.path.join(folder, entry), errors="replace") as handle:
                written[os.path.join(folder, entry)] = handle.read()
    live = [line for text in written.values() for line in lines_as_systemd_reads(text) if pwned in line
            and not line.lstrip().startswith("#")]
    assert not live, "a line of the service name became a live line of %s: %r" % (sorted(written), live)
    assert not written, "the play wrote %s before refusing the service name" % sorted(written)
    assert h.tree(root_dir) == before, "the play wrote %s" % sorted(set(h.tree(root_dir)) - set(before))
    called = open(calls).read().split("\n") if os.path.exists(calls) else []
    assert not [c for c in called if c.split()[:1] in (["daemon-reload"], ["enable"], ["start"])], called
    assert not os.path.exists(lab["pipe"]), "the daemon was started"
    assert done.returncode != 0 and "mps_host_service_name" in out, out[-3000:]


# --- QoS class files -------------------------------------------------------------------------------------------

def sourced(path, marker):
    """What a job script gets from the class file (`set -a; . FILE`): its environment, and whether a command ran."""
    env = subprocess.run(["sh", "-c", "set -a; . %s; set +a; env" % path], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, timeout=30, check=False).stdout.splitlines()
    return env, os.path.exists(marker)


def assert_class_files_hold_no_command(directory, marker):
    for entry in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        path = os.path.join(directory, entry)
        with open(path) as handle:
            text = handle.read()
        assignments = [line for line in lines_as_systemd_reads(text) if not line.lstrip().startswith("#")]
        foreign = [line for line in assignments if not re.match(r"^CUDA_MPS_[A-Z_]+=", line)]
        assert not foreign, "%s: lines that systemd's EnvironmentFile= reads as its own: %r" % (path, foreign)
        env, ran = sourced(path, marker)
        assert not ran, "sourcing %s ran a command:\n%s" % (path, text)
        assert not [v for v in env if v.startswith("LD_PRELOAD=")], (path, text)


@pytest.mark.parametrize("separator", ["\n", "\r", "\r\n"], ids=["newline", "carriage-return", "crlf"])
def test_a_line_break_in_a_class_description_becomes_no_command(lab, root_dir, tmp_path, separator):
    """The QoS part of the plan, as mps_qos_files receives it (preflight_mps_plan.qos), with a line break in a class's
    description: refused, or written so that neither sh nor systemd reads a command or a variable out of it."""
    directory = os.path.join(root_dir, "qos")
    marker = os.path.join(root_dir, "command-ran")
    qos = copy.deepcopy(h.plan_for(lab, str(tmp_path), qos_directory=directory)["qos"])
    qos["classes"]["batch"]["description"] = "bulk work%stouch %s%sLD_PRELOAD=/tmp/gpulab-evil.so" % (
        separator, marker, separator)
    done = h.run_module("mps_qos_files", {"qos": qos}, str(tmp_path))
    assert_class_files_hold_no_command(directory, marker)
    if done.get("failed"):
        assert "description" in done["msg"], h.summary(done)
        assert not os.path.exists(directory) or not os.listdir(directory), "written, then refused"


@pytest.mark.parametrize("separator", ["\n", "\r"], ids=["newline", "carriage-return"])
def test_a_line_break_in_a_declared_class_description_becomes_no_command(lab, root_dir, tmp_path, separator):
    """The same through the user's setting (gpulab_mps_qos_classes, read by mps_plan): refused by the plan, or written
    harmlessly by mps_qos_files."""
    directory = os.path.join(root_dir, "qos")
    marker = os.path.join(root_dir, "command-ran")
    planned = h.run_module("mps_plan", {
        "pipe_directory": lab["pipe"], "log_directory": lab["log"], "state_directory": lab["state"],
        "control_binary": h.CONTROL, "qos_directory": directory,
        "qos_classes": {"batch": {"active_thread_percentage": 12, "client_priority": 1,
                                  "description": "bulk%stouch %s%sLD_PRELOAD=/tmp/gpulab-evil.so" % (
                                      separator, marker, separator)}}}, str(tmp_path))
    if planned.get("failed"):
        assert "description" in planned["msg"], h.summary(planned)
        return
    done = h.run_module("mps_qos_files", {"qos": planned["plan"]["qos"]}, str(tmp_path))
    assert_class_files_hold_no_command(directory, marker)
    assert not done.get("failed") or "description" in done["msg"], h.summary(done)


NAMES = {"parent": "../escape", "grandparent": "../../escape", "through-a-subdirectory": "sub/../../escape",
         "dot-dot": "..", "absolute": "{base}/absolute-escape", "newline": "batch\nLD_PRELOAD=x"}


@pytest.mark.parametrize("case", sorted(NAMES))
def test_a_class_name_that_leaves_the_directory_is_refused(lab, root_dir, tmp_path, case):
    """A class name is a file name: one that leaves the QoS directory (or is no plain name) is refused with a clear
    error, before anything is written, and nothing appears outside the directory."""
    directory = os.path.join(root_dir, "a", "qos")   # every escape above stays inside root_dir, where it is seen
    name = NAMES[case].format(base=root_dir)
    qos = copy.deepcopy(h.plan_for(lab, str(tmp_path), qos_directory=directory)["qos"])
    qos["classes"][name] = qos["classes"].pop("batch")
    before = h.tree(root_dir)
    for check in (True, False):
        done = h.run_module("mps_qos_files", {"qos": qos}, str(tmp_path), check=check)
        assert done.get("failed"), "class %r accepted (check mode %s): %s" % (name, check, h.summary(done))
        assert (name in done["msg"] or repr(name) in done["msg"]) and "name" in done["msg"].lower(), h.summary(done)
        assert h.tree(root_dir) == before, "mps_qos_files wrote something for class %r" % name
