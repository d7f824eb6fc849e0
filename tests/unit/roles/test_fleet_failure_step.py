# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The step a failed node is reported at, as playbooks/fleet.yml's rescue writes it (`fleet_node_result.stage`),
rendered by ansible-playbook from the very expression in fleet.yml.

Regression (cluster lane, 2026-12-04): a drain that the real cluster refused was reported as
`localhost failed at apply (Drain - cordon and drain the Kubernetes node)`: under ansible-core 2.19 the
`regex_replace(..., '\\\\1')` of the expression put a literal backslash-1 in place of the group, so every failure was
`apply` (a failure at the drain, the health gate, the dial-tone or the uncordon never said so)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def stage_expression():
    with open(os.path.join(ROOT, "playbooks", "fleet.yml")) as handle:
        plays = yaml.safe_load(handle)
    (rollout,) = [p for p in plays if p.get("tags") == ["rollout"]]
    (block,) = [t for t in rollout["tasks"] if "rescue" in t]
    (record,) = [t for t in block["rescue"] if t.get("name") == "Record the failure, with the step and the reason"]
    return record["ansible.builtin.set_fact"]["fleet_node_result"]["stage"]


@pytest.mark.parametrize("task, stage", [
    ("Drain - cordon and drain the Kubernetes node", "drain"),
    ("Drain - read the batch's Kubernetes nodes", "drain"),
    ("Health gate - the MPS control daemon answers", "health gate"),
    ("Dial-tone - the daemon answers `ps`", "dial-tone"),
    ("Uncordon - the Kubernetes node", "uncordon"),
    ("Start the daemon if needed and apply the defaults, verified by read-back", "apply"),
    ("Install and start the systemd service", "apply"),
])
def test_a_failure_is_reported_at_its_step(tmp_path, task, stage):
    playbook = tmp_path / "stage.yml"
    playbook.write_text(yaml.safe_dump([{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars": {"ansible_python_interpreter": sys.executable},
        "tasks": [{"block": [{"name": task, "ansible.builtin.fail": {"msg": "the step failed"}}],
                   "rescue": [{"name": "The stage", "ansible.builtin.set_fact": {"stage": stage_expression()}},
                              {"name": "Say it", "ansible.builtin.debug": {"msg": "STAGE<{{ stage }}>"}}]}]}],
        width=1000))
    binary = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable)) or shutil.which("ansible-playbook")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_CALLBACK_RESULT_FORMAT="json")
    done = subprocess.run([binary, "-i", "localhost,", str(playbook)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    said = re.findall(r"STAGE<([^>]*)>", done.stdout)
    assert said, done.stdout[-2000:]
    assert said[0] == stage
