# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every role that reads the host's plan, run without it, says to run preflight first, before it changes anything.

Regression (CI, molecule kind_host, 2026-12-04): kind_cluster's side effect ran the role without the plan and died in
the argument check with "'preflight_mps_plan' is undefined" (a default rendered there), not with its own message."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
ROLES = sorted(name for name in os.listdir(os.path.join(ROOT, "roles"))
               if os.path.exists(os.path.join(ROOT, "roles", name, "tasks", "main.yml"))
               and "Require the host's MPS plan" in open(os.path.join(ROOT, "roles", name, "tasks", "main.yml")).read())


def test_the_roles_that_read_the_plan_say_so():
    readers = set()
    for name in os.listdir(os.path.join(ROOT, "roles")):
        for part in ("tasks/main.yml", "defaults/main.yml", "vars/main.yml"):
            path = os.path.join(ROOT, "roles", name, part)
            if os.path.exists(path) and "preflight_mps_plan" in open(path).read():
                readers.add(name)
    readers.discard("preflight")
    assert readers and readers <= set(ROLES), "roles that read the plan without requiring it: %s" % (
        sorted(readers - set(ROLES)))


@pytest.mark.parametrize("role", ROLES)
def test_a_role_without_the_plan_asks_for_preflight(tmp_path, role):
    playbook = tmp_path / "p.yml"
    playbook.write_text("- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n"
                        "    - ansible.builtin.include_role: {name: gpulab.mps.%s}\n" % role)
    binary = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable)) or shutil.which("ansible-playbook")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    done = subprocess.run([binary, "-i", "localhost,", str(playbook), "-e", "ansible_python_interpreter=%s" % sys.executable],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)
    out = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0, out[-2000:]
    assert "Require the host's MPS plan" in out and "preflight role" in out and "is undefined" not in out, out[-3000:]
    assert "changed=0" in out, out[-2000:]
