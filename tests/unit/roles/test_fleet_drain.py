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


def start_api(tmp_path, *extra):
    port_file, journal = tmp_path / "port", tmp_path / "journal.jsonl"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "standins", "fake_kube_api.py"),
                             "--port-file", str(port_file), "--journal", str(journal), "--lifetime", "120"]
                            + list(extra) + ["node-a"])
    deadline = time.time() + 20
    while not port_file.exists() and time.time() < deadline:
        time.sleep(0.05)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "standin",
        "clusters": [{"name": "standin", "cluster": {"server": "http://127.0.0.1:%s" % port_file.read_text().strip()}}],
        "users": [{"name": "standin", "user": {"token": "standin"}}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin"}}]}))
    return proc, kubeconfig, journal


@pytest.fixture
def api(tmp_path):
    proc, kubeconfig, journal = start_api(tmp_path)
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


# --- fleet.yml itself, on this machine against the stand-ins (the MPS daemon emulator, the NVML module, the API) ---

sys.path.insert(0, os.path.join(ROOT, "tests", "unit", "benchmarks"))
from fake_exec import executable  # noqa: E402

STANDINS = os.path.join(ROOT, "tests", "standins")
CONTROL = executable(os.path.join(STANDINS, "nvidia-cuda-mps-control"), "nvidia-cuda-mps-control-standin")


@pytest.fixture
def fleet_lab(tmp_path):
    proc, kubeconfig, journal = start_api(tmp_path, "--shm-pod", "node-a")
    pipe, log = str(tmp_path / "mps" / "pipe"), str(tmp_path / "mps" / "log")
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("gpu_nodes:\n  hosts:\n    localhost:\n")
    lab = {"journal": journal, "summary": str(tmp_path / "summary.json"), "inventory": str(inventory), "pipe": pipe,
           "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                    "preflight_control_binary": CONTROL, "mps_host_pipe_directory": pipe, "mps_host_log_directory": log,
                    "mps_host_state_directory": str(tmp_path / "state"), "mps_host_service_manager": "direct",
                    "gpulab_mps_qos_directory": str(tmp_path / "qos"), "mps_dialtone_client_check": False,
                    "fleet_kubernetes_node": "node-a", "fleet_kubeconfig": str(kubeconfig),
                    "fleet_health_settle": 0, "fleet_drain_timeout": 10,
                    "fleet_summary_file": str(tmp_path / "summary.json")}}
    yield lab
    env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=pipe, CUDA_MPS_LOG_DIRECTORY=log)
    subprocess.run([CONTROL], input="quit\n", text=True, capture_output=True, env=env, timeout=30, check=False)
    proc.terminate()
    proc.wait(10)


def fleet(lab, **extra):
    binary = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable)) or shutil.which("ansible-playbook")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1", PYTHONPATH=STANDINS)
    done = subprocess.run([binary, "-i", lab["inventory"], os.path.join(ROOT, "playbooks", "fleet.yml"),
                           "-e", json.dumps(dict(lab["vars"], **extra))], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    with open(lab["summary"]) as handle:
        (node,) = json.load(handle)["nodes"]
    return done, node


def test_a_drain_refused_for_a_pod_with_an_emptydir_is_reported_at_the_drain_and_not_cordoned(fleet_lab):
    """The collection's MPS pods have /dev/shm as a memory emptyDir: without fleet_drain_delete_emptydir_data the
    drain is refused before any eviction (as kubectl drain), k8s_drain puts the node back, and the summary says so.
    Regression: it said `failed at apply ... - the Kubernetes node stays cordoned`, with MPS `not running`."""
    done, node = fleet(fleet_lab)
    assert done.returncode == 2, done.stdout[-3000:]
    assert (node["result"], node["step"]) == ("failed", "drain"), node
    assert "cannot delete Pods with local storage: default/shm-node-a." in node["reason"], node
    assert node["kubernetes"].startswith("not cordoned"), node
    assert node["mps"] == "not read", node
    assert "stays cordoned" not in done.stdout
    assert events(fleet_lab["journal"]) == [("cordon", None), ("uncordon", None)]


def test_with_emptydir_data_allowed_the_node_is_drained_changed_and_uncordoned(fleet_lab):
    done, node = fleet(fleet_lab, fleet_drain_delete_emptydir_data=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert (node["result"], node["kubernetes"]) == ("ok", "drained and uncordoned"), node
    seen = events(fleet_lab["journal"])
    assert (seen[0], seen[-1]) == (("cordon", None), ("uncordon", None))
    assert sorted(seen[1:-1]) == [("evict", "default/shm-node-a"), ("evict", "default/work-node-a")]


def test_device_plugin_alone_reaches_the_existing_cluster_and_refuses_a_missing_runtime_class(fleet_lab):
    """site.yml --tags device_plugin on an existing cluster (kind_cluster_kubeconfig in the inventory), as the cluster
    lane ran it against a real API server. Regression: the device_plugin role used no kubeconfig without the
    kind_cluster stage in the play ('Could not create API client: Invalid kube-config file. No configuration found.');
    and (F1) a RuntimeClass that the cluster lacks is named before anything is deployed."""
    lab = fleet_lab
    binary = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable)) or shutil.which("ansible-playbook")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1", PYTHONPATH=STANDINS)
    inventory = os.path.join(os.path.dirname(lab["inventory"]), "site-hosts.yml")
    with open(inventory, "w") as handle:
        handle.write("gpu_hosts:\n  hosts:\n    localhost:\n")
    done = subprocess.run([binary, "-i", inventory, os.path.join(ROOT, "site.yml"), "--tags", "device_plugin", "-e",
                           json.dumps(dict(lab["vars"], kind_cluster_target="existing", gpulab_mps_owner="plugin",
                                           kind_cluster_kubeconfig=lab["vars"]["fleet_kubeconfig"],
                                           kind_cluster_context="standin",
                                           device_plugin_nodes=[{"name": "node-a", "gpus": "all"}]))],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    out = " ".join(done.stdout.split())
    assert done.returncode == 2, out[-3000:]
    assert "Invalid kube-config" not in out
    assert 'has no RuntimeClass of that name' in out and 'RuntimeClass "nvidia" not found' in out, out[-3000:]
    assert "Apply the namespace, RBAC and configuration" not in out
