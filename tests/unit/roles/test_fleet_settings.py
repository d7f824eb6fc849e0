# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/fleet.yml's settings check, through ansible-playbook: values Ansible cannot use are refused by the
first play, on the controller, before any node is touched (no node is reachable here: none must be needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def fleet(tmp_path, *extra):
    inventory = tmp_path / "hosts.yml"
    # An address nobody answers: the settings check must fail before any task would reach it.
    inventory.write_text("gpu_nodes:\n  hosts:\n    node-a: {ansible_host: 192.0.2.1}\n")
    binary = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable)) or shutil.which("ansible-playbook")
    argv = [binary, "-i", str(inventory), os.path.join(ROOT, "playbooks", "fleet.yml")]
    for item in extra:
        argv += ["-e", item]
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("serial", ["12.5%", "0", "150%", "0%", "ten"])
def test_a_batch_size_ansible_cannot_use_is_refused_first(tmp_path, serial):
    """Regression: fleet_serial "12.5%" passed the fleet's check and then crashed ansible-playbook."""
    done = fleet(tmp_path, "fleet_serial=%s" % serial)
    out = " ".join(done.stdout.split())
    assert done.returncode != 0
    assert "Invalid rollout settings" in out and "Ansible cannot use" in out, out[-2000:]
    assert "PLAY [Fleet rollout - preflight" not in out  # stopped at the settings check: no node was contacted
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("serial", ["25%", "100%", "3"])
def test_usable_batch_sizes_pass_the_check(tmp_path, serial):
    done = fleet(tmp_path, "fleet_serial=%s" % serial)
    assert "Invalid rollout settings" not in done.stdout
