# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet's drain task (playbooks/tasks/fleet_drain.yml, `Drain - cordon and drain the Kubernetes node`), run as
written with the real kubernetes.core.k8s_drain against the stand-in API (tests/standins/fake_kube_api.py), whose node
carries what the real cluster of tests/cluster had on it: the device plugin's DaemonSet pod, with an emptyDir and the
controller's pod-template-generation label, beside a ReplicaSet pod.

Regression (cluster lane, 2026-12-04): the drain failed on every node that runs the collection's device plugin:
`Pod deletion errors: cannot delete Pods with local storage: ...,nvidia-device-plugin/nvidia-device-plugin-4hbsb.`
kubernetes.core.k8s_drain looks at emptyDir volumes before it looks at the owner, so `ignore_daemonsets` does not
ignore a DaemonSet pod with an emptyDir; with `delete_emptydir_data` it even evicts it
(ansible-collections/kubernetes.core#622). kubectl drain never touches DaemonSet pods."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DRAIN_TASK = "Drain - cordon and drain the Kubernetes node"


def drain_task():
    with open(os.path.join(ROOT, "playbooks", "tasks", "fleet_drain.yml")) as handle:
        tasks = yaml.safe_load(handle)
    (task,) = [t for t in tasks if t.get("name") == DRAIN_TASK]
    # As the fleet runs it, without what needs the rest of the rollout (the decision, the delegation).
    return dict((k, v) for k, v in task.items() if k not in ("when", "delegate_to", "become"))


@pytest.fixture
def api(tmp_path):
    port_file, journal = tmp_path / "port", tmp_path / "journal.jsonl"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "standins", "fake_kube_api.py"),
                             "--port-file", str(port_file), "--journal", str(journal), "--lifetime", "120", "node-a"])
    deadline = time.time() + 20
    while not port_file.exists() and time.time() < deadline:
        time.sleep(0.05)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "standin",
        "clusters": [{"name": "standin", "cluster": {"server": "http://127.0.0.1:%s" % port_file.read_text().strip()}}],
        "users": [{"name": "standin", "user": {"token": "standin"}}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin"}}]}))
    yield kubeconfig, journal
    proc.terminate()
    proc.wait(10)


def drain(tmp_path, kubeconfig, **settings):
    playbook = tmp_path / "drain.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "The fleet's drain task", "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars": dict({"ansible_python_interpreter": sys.executable, "__fleet_k8s_node": "node-a",
                      "fleet_kubeconfig": str(kubeconfig)}, **settings),
        "tasks": [drain_task()]}]))
    binary = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable)) or shutil.which("ansible-playbook")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run([binary, "-i", "localhost,", str(playbook)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180, check=False)


def events(journal):
    with open(journal) as handle:
        return [(e["event"], e.get("pod")) for e in map(json.loads, handle) if e["event"] not in ("start", "list-nodes")]


@pytest.mark.parametrize("emptydir", [False, True])
def test_the_drain_evicts_the_workload_and_never_touches_the_daemonset_pod(tmp_path, api, emptydir):
    kubeconfig, journal = api
    done = drain(tmp_path, kubeconfig, fleet_drain_delete_emptydir_data=emptydir)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "cannot delete Pods with local storage" not in done.stdout
    assert events(journal) == [("cordon", None), ("evict", "default/work-node-a")]
