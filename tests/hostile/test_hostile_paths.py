# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 20, root acting through planted paths: every directory a role or module writes follows the pipe directory's
rules - no link followed, no owner or mode changed on what the collection did not make, nothing executed from a
directory another user could have made - and the refusal says why.

Played for real: the throwaway user plants a symbolic link, or makes the directory first, where root's collection is
about to write (a folder like /tmp, or one of his own as /var/lib/prometheus is the prometheus user's). Root then runs
the mps_metrics role (ansible-playbook on localhost, with the stand-ins and a local wheel folder), mps_qos_files and
mps_unit. What the link aims at keeps its owner, mode and content; what he made stays his and unchanged; no program
of his runs as root.
"""

from __future__ import annotations

import os
import sys

import pytest

import _hostile as h

pytestmark = h.NEEDS_ROOT


@pytest.fixture
def private(root_dir):
    """A directory only root may enter, with a secret in it: what a planted link aims at."""
    path = os.path.join(root_dir, "private")
    os.mkdir(path, 0o700)
    with open(os.path.join(path, "secret"), "w") as handle:
        handle.write("root's secret\n")
    os.chmod(os.path.join(path, "secret"), 0o600)
    return path


# --- the mps_metrics role --------------------------------------------------------------------------------------

PLAY = """- name: The host's plan, then the MPS metrics collector (what site.yml runs for them)
  hosts: gpu_hosts
  gather_facts: false
  roles:
    - role: gpulab.mps.preflight
    - role: gpulab.mps.mps_metrics
"""


def metrics_role(lab, folder, wheelhouse, **paths):
    """The preflight and mps_metrics roles through ansible-playbook on localhost, no systemd (the role runs the
    collector once), the stand-ins for NVML and the control binary."""
    play, inventory = os.path.join(folder, "metrics.yml"), os.path.join(folder, "hosts.yml")
    with open(play, "w") as handle:
        handle.write(PLAY)
    with open(inventory, "w") as handle:
        handle.write("gpu_hosts:\n  hosts:\n    localhost:\n")
    variables = dict({
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "preflight_control_binary": h.CONTROL, "mps_host_pipe_directory": lab["pipe"],
        "mps_host_log_directory": lab["log"], "mps_host_state_directory": lab["state"],
        "mps_host_service_manager": "direct", "mps_metrics_service_manager": "direct",
        "mps_metrics_wheel_directory": wheelhouse,
        "mps_metrics_textfile_directory": os.path.join(lab["base"], "textfile"),
        "mps_metrics_install_directory": os.path.join(lab["base"], "lib"),
        "mps_metrics_config_directory": os.path.join(lab["base"], "etc"),
        # The client and the plan file (role mps_client) under the lab too, never the host's own directories.
        "gpulab_mps_lib_directory": os.path.join(lab["base"], "client"),
        "gpulab_mps_config_directory": os.path.join(lab["base"], "client-etc")}, **paths)
    return h.playbook(play, inventory, variables, folder)


@pytest.mark.parametrize("option, planted", [
    ("mps_metrics_textfile_directory", "link-to-roots-directory"),
    ("mps_metrics_textfile_directory", "his-own-directory"),
    ("mps_metrics_config_directory", "link-to-roots-directory")])
def test_the_metrics_role_writes_in_no_directory_another_user_planted(lab, intruder, private, wheelhouse, tmp_path,
                                                                      option, planted):
    """node_exporter's textfile directory sits in a directory of another user (Debian's /var/lib/prometheus is the
    prometheus user's); so, here, does the collector's configuration directory. He plants a link there, in place of
    the directory, to a directory of root's; or makes that directory himself."""
    parent = os.path.join(lab["base"], "prometheus")
    os.mkdir(parent, 0o755)
    os.chown(parent, intruder["uid"], intruder["gid"])
    planted_path = os.path.join(parent, "node-exporter")
    if planted == "link-to-roots-directory":
        h.as_user(intruder, "import os; os.symlink(%r, %r)" % (private, planted_path))
    else:
        h.as_user(intruder, "import os; os.mkdir(%r, 0o755)" % planted_path)
    before = h.tree(parent, private)
    done = metrics_role(lab, str(tmp_path), wheelhouse, **{option: planted_path})
    out = h.oneline(done.stdout)
    assert h.tree(parent, private) == before, "the role changed what it did not make: %s" % out[-3000:]
    assert h.owner_and_mode(private) == (0, 0o700)
    assert done.returncode != 0, "the role used %s (%s): %s" % (planted_path, planted, out[-3000:])
    assert planted_path in out, out[-3000:]
    if planted == "link-to-roots-directory":
        assert "link" in out, out[-3000:]


def test_the_metrics_role_runs_nothing_from_an_install_directory_another_user_made(
        lab, intruder, sticky, wheelhouse, tmp_path):
    """The install directory is in a folder everyone may write, and he made it first, with a venv of his own: its
    pip and python only leave a mark of who ran them. Root's role must refuse the directory, run nothing in it, and
    leave it as he made it."""
    install = os.path.join(sticky, "gpulab-mps")
    mark = os.path.join(sticky, "ran")
    h.as_user(intruder, """
import os
venv = os.path.join(%(install)r, "venv", "bin")
os.makedirs(venv, 0o755)
for name in ("activate", "python", "python3", "pip", "pip3"):
    path = os.path.join(venv, name)
    with open(path, "w") as handle:
        handle.write("#!/bin/sh\\necho \\"uid $(id -u): $0 $*\\" >> %(mark)s\\nexit 0\\n")
    os.chmod(path, 0o755)
""" % {"install": install, "mark": mark})
    before = h.tree(install)
    done = metrics_role(lab, str(tmp_path), wheelhouse, mps_metrics_install_directory=install)
    out = h.oneline(done.stdout)
    ran = open(mark).read() if os.path.exists(mark) else ""
    assert not ran, "root ran the intruder's programs:\n%s" % ran
    assert h.tree(install) == before, "the role changed what it did not make: %s" % out[-3000:]
    assert done.returncode != 0 and install in out, out[-3000:]


# --- mps_qos_files ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("planted", ["link-to-roots-directory", "his-own-directory"])
def test_qos_files_are_not_written_where_another_user_planted(lab, intruder, sticky, private, tmp_path, planted):
    """The plan's QoS directory is in a folder everyone may write; between the plan and the write he plants a link
    there to a directory of root's, or makes the directory himself with a class file that looks like the
    collection's."""
    qos = os.path.join(sticky, "qos")
    plan = h.plan_for(lab, str(tmp_path), qos_directory=qos)
    if planted == "link-to-roots-directory":
        h.as_user(intruder, "import os; os.symlink(%r, %r)" % (private, qos))
    else:
        h.as_user(intruder, """
import os
os.mkdir(%r, 0o755)
with open(os.path.join(%r, "batch.env"), "w") as handle:
    handle.write("# gpulab.mps QoS class batch\\nLD_PRELOAD=/tmp/his.so\\n")
""" % (qos, qos))
    before = h.tree(sticky, private)
    for check in (True, False):
        done = h.run_module("mps_qos_files", {"qos": plan["qos"]}, str(tmp_path), check=check)
        assert h.tree(sticky, private) == before, "mps_qos_files changed what it did not make (check mode %s): %s" % (
            check, h.summary(done))
        assert done.get("failed") and qos in done["msg"], h.summary(done)


# --- mps_unit --------------------------------------------------------------------------------------------------

def fake_systemctl(folder):
    """A systemctl first on PATH that records its calls and fails (no systemd here)."""
    bindir = os.path.join(folder, "bin")
    os.makedirs(bindir, exist_ok=True)
    calls = os.path.join(folder, "systemctl.calls")
    h.script(os.path.join(bindir, "systemctl"), 'echo "$*" >> %s\necho "System has not been booted with systemd" >&2\n'
             'exit 1\n' % calls)
    return bindir, calls


@pytest.mark.parametrize("planted", ["his-unit-directory", "link-to-roots-directory", "his-drop-in-directory",
                                     "his-tmpfiles-directory"])
def test_unit_files_are_not_written_where_another_user_planted(intruder, sticky, root_dir, private, tmp_path, planted):
    """The unit, drop-in and tmpfiles.d paths lie where he could act first: a unit directory he made, a link in place
    of it, a drop-in directory he made in a folder like /tmp, a tmpfiles.d directory he made."""
    units, tmpfiles = os.path.join(root_dir, "system"), os.path.join(root_dir, "tmpfiles.d")
    os.mkdir(units, 0o755)
    os.mkdir(tmpfiles, 0o755)
    if planted == "his-unit-directory":
        units = os.path.join(sticky, "system")
        h.as_user(intruder, "import os; os.mkdir(%r, 0o755)" % units)
    elif planted == "link-to-roots-directory":
        units = os.path.join(sticky, "system")
        h.as_user(intruder, "import os; os.symlink(%r, %r)" % (private, units))
    elif planted == "his-drop-in-directory":
        units = sticky
        h.as_user(intruder, "import os; os.mkdir(%r, 0o755)" % os.path.join(sticky, "nvidia-mps.service.d"))
    else:
        tmpfiles = os.path.join(sticky, "tmpfiles.d")
        h.as_user(intruder, "import os; os.mkdir(%r, 0o755)" % tmpfiles)
    bindir, calls = fake_systemctl(str(tmp_path))
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ["PATH"])
    # The plan names the unit and tmpfiles.d directories (gpulab_mps_* settings, read by preflight), and mps_unit
    # renders the files from it; the client's entry point and the plan file are in place, as mps_client leaves them.
    lib, etc = os.path.join(root_dir, "lib"), os.path.join(root_dir, "etc")
    os.makedirs(lib, 0o755)
    os.makedirs(etc, 0o755)
    lab = {"pipe": "/run/gpulab-hostile-pipe", "log": "/run/gpulab-hostile-log", "state": os.path.join(root_dir, "state")}
    plan = h.plan_for(lab, str(tmp_path), unit_directory=units, tmpfiles_directory=tmpfiles, lib_directory=lib,
                      config_directory=etc, service_manager="systemd")
    for path in (os.path.join(lib, "gpulab_mps.py"), os.path.join(etc, "plan.json")):
        with open(path, "w") as handle:
            handle.write("# the client's file\n")
    watched = [sticky, root_dir]
    before = h.tree(*watched)
    done = h.run_module("mps_unit", {"plan": plan}, str(tmp_path), env=env)
    assert h.tree(*watched) == before, "mps_unit wrote where %s: %s" % (planted, h.summary(done))
    assert h.owner_and_mode(private) == (0, 0o700)
    assert done.get("failed"), h.summary(done)
    assert any(path in done["msg"] for path in (units, tmpfiles, os.path.join(units, "nvidia-mps.service.d"))), \
        h.summary(done)
    called = open(calls).read().split("\n") if os.path.exists(calls) else []
    assert not [c for c in called if c.split()[:1] in (["daemon-reload"], ["enable"], ["start"])], called
