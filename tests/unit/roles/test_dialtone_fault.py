# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host dial-tone (roles/mps_dialtone), through ansible-playbook on localhost, against the STAND-IN control
daemon of tests/standins (no GPU): a server in FAULT fails it with mps_info's message and what to do; a healthy
daemon passes. The FAULT is made with the stand-in's hidden test hooks (standin_attach_client, standin_fault)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from ansible_collections.gpulab.mps.plugins.module_utils import _plan

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from module_file import CONTROL, control, run  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

PLAY = """
- name: Dial-tone against the stand-in
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: %(python)s
    preflight_mps_plan: %(plan)s
    mps_dialtone_client_check: false
    mps_dialtone_timeout: 10
  roles:
    - role: gpulab.mps.mps_dialtone
"""


@pytest.fixture
def lab(tmp_path):
    lab = {"pipe_directory": str(tmp_path / "pipe"), "log_directory": str(tmp_path / "log"),
           "state_directory": str(tmp_path / "state"), "control_binary": CONTROL}
    started = run("mps_daemon", lab, folder=str(tmp_path / "args"))
    assert not started.get("failed"), started.get("msg")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield dict(lab, holder=holder)
    holder.kill()
    holder.wait()
    control(lab["pipe_directory"], lab["log_directory"], "quit -t 0")


def dialtone(tmp_path, lab):
    # A plan as the preflight role publishes it, for this stand-in daemon (the same code makes it).
    plan, errors = _plan.local_plan({"pipe_directory": lab["pipe_directory"], "log_directory": lab["log_directory"],
                                     "control_binary": lab["control_binary"],
                                     "state_directory": str(tmp_path / "state")})
    assert not errors, errors
    playbook = tmp_path / "dialtone.yml"
    playbook.write_text(PLAY % {"python": sys.executable, "plan": json.dumps(plan)})
    binary = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable)) or shutil.which("ansible-playbook")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               PYTHONPATH=os.path.join(ROOT, "tests", "standins"))
    done = subprocess.run([binary, "-i", "localhost,", str(playbook)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180, check=False)
    return done.returncode, " ".join((done.stdout + done.stderr).split())


def test_a_server_in_fault_fails_the_dialtone_with_what_to_do(tmp_path, lab):
    def ctl(command):
        return control(lab["pipe_directory"], lab["log_directory"], command)

    assert ctl("standin_attach_client %d" % lab["holder"].pid) == ""
    ctl("standin_fault %d" % lab["holder"].pid)
    rc, out = dialtone(tmp_path, lab)
    assert rc != 0, out[-3000:]
    assert "Dial-tone - MPS is healthy" in out
    assert "is in FAULT" in out and "fault_recovery=end_clients" in out, out[-3000:]
    assert "Traceback" not in out
    assert lab["holder"].poll() is None  # the dial-tone reports; it ends nothing


def test_a_healthy_daemon_passes_the_dialtone(tmp_path, lab):
    rc, out = dialtone(tmp_path, lab)
    assert rc == 0, out[-3000:]
    assert "MPS answers in" in out
