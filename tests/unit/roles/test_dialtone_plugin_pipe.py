# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pipe directory the pod dial-tone names when the device plugin owns MPS: the one of the resource the pod asks.

Regression (cluster lane, 2026-12-04, individual mode with the seed-004 fork): the dial-tone pod asked for
nvidia.com/gpu0, whose pipe the plugin mounts from /run/nvidia/mps/nvidia.com/gpu0/pipe, and the role's message said
'MPS daemon answered ... through /run/nvidia/mps/nvidia.com/gpu/pipe' (a fixed default, aggregate mode's)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.mark.parametrize("resource, pipe", [("nvidia.com/gpu0", "/run/nvidia/mps/nvidia.com/gpu0/pipe"),
                                            ("nvidia.com/gpu", "/run/nvidia/mps/nvidia.com/gpu/pipe")])
def test_the_plugin_pipe_follows_the_resource_the_pod_asks(tmp_path, resource, pipe):
    playbook = tmp_path / "p.yml"
    playbook.write_text(
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.include_vars: {file: %s}\n"
        "    - ansible.builtin.debug: {msg: 'PIPE<{{ mps_dialtone_pod_plugin_pipe_directory }}>'}\n"
        % os.path.join(ROOT, "roles", "mps_dialtone", "defaults", "main.yml"))
    plan = {"owner": "plugin", "sharing": {"pod_resource": resource}}
    binary = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable)) or shutil.which("ansible-playbook")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    done = subprocess.run([binary, "-i", "localhost,", str(playbook), "-e", json.dumps({
        "preflight_mps_plan": plan, "ansible_python_interpreter": sys.executable})], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120, check=False)
    assert re.findall(r"PIPE<([^>]*)>", done.stdout) == [pipe], done.stdout[-2000:]
