# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection itself against the cluster lane's real Kubernetes: site.yml, playbooks/fleet.yml and
playbooks/teardown.yml, run with ansible-playbook as a user runs them, on the lane's node.

How ansible-playbook reaches the API server: the API server listens only inside the lane's network namespace (its
127.0.0.1 and the node address on that namespace's `lo`), so ansible-playbook runs there, started with
`nsenter --net=/run/netns/<lane>` and nothing else: the mount, PID, IPC and user namespaces stay the host's, so the
host stages act on the host itself (its files, its processes), and the kubeconfig is the lane's admin kubeconfig at
https://127.0.0.1:6443. No route or address is added anywhere and no traffic leaves the namespace.

The host stages run against the project's stand-ins where this machine has no GPU:
- NVML: NVIDIA's mock NVML (the same library and the same GPU profile as the node's device plugin sees: 4 GPUs of
  32601 MiB, seed 004's 31.84 GiB), loaded by the real nvidia-ml-py through LD_LIBRARY_PATH and MOCK_NVML_CONFIG in
  ansible-playbook's environment, which the local connection passes to the modules; so the host's plan names the
  very GPUs (UUIDs, memory) the node advertises.
- the MPS control binary: tests/standins/nvidia-cuda-mps-control, through a wrapper in the lane's state directory
  (root's, 0700) that gives it the lane's GPU count (GPULAB_STANDIN_GPUS=4; the collection starts the daemon with the
  plan's environment only, so the knob cannot come from the caller) and Debian's python3 (the stand-in's shebang
  names `python`, which this host lacks on root's safe PATH).
- every directory of the host stages (pipe, log, state, QoS, config, lib) under the lane's state directory, so that
  the lane's teardown removes them and the host check sees nothing of them.

The pure parts (the inventory, the wrapper, the recap and record readers, the leftovers check) are tested on the CPU
in tests/unit/cluster/test_collection.py.
"""

from __future__ import annotations

import json
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CALLBACKS = os.path.join(HERE, "callback_plugins")
RECORD_CALLBACK = "gpulab_lane_record"

# The seed-004 fork's image in the lane (device_plugin_image of mode individual): its binaries from DP_BIN/fork, the
# upstream config-manager (the fork does not change it), the mock NVML.
FORK_IMAGE = "docker.io/gpulab/lane-dp-fork:52596d72"
MANAGED_BY = "app.kubernetes.io/managed-by=gpulab.mps"
# The task names the lane reads from a run's record (the roles' own names).
DIALTONE_POD_OK = "Check that MPS answered inside the pod"
NODE_RESOURCES_OK = "Check the resources of each node"
HOST_SHARE_OK = "Check that the host MPS daemon holds the replicas' share"
DRAIN_TASK = "Drain - cordon and drain the Kubernetes node"
UNCORDON_TASK = "Uncordon - the Kubernetes node"
APPLY_TASK = "Start the daemon if needed and apply the defaults, verified by read-back"


class Paths(object):
    """Where the collection's host stages keep their files in a lane run (all under the lane's state directory)."""

    def __init__(self, state):
        self.base = os.path.join(state, "collection")
        self.bin = os.path.join(self.base, "bin")
        self.control = os.path.join(self.bin, "nvidia-cuda-mps-control")
        self.mps = os.path.join(self.base, "mps")
        self.pipe = os.path.join(self.mps, "pipe")
        self.log = os.path.join(self.mps, "log")
        self.runs = os.path.join(self.base, "runs")

    def host_vars(self):
        return {"mps_host_pipe_directory": self.pipe, "mps_host_log_directory": self.log,
                "mps_host_state_directory": os.path.join(self.mps, "state"),
                "gpulab_mps_qos_directory": os.path.join(self.mps, "qos"),
                "gpulab_mps_config_directory": os.path.join(self.mps, "etc"),
                "gpulab_mps_lib_directory": os.path.join(self.mps, "lib"),
                "mps_host_unit_directory": os.path.join(self.mps, "systemd"),
                "mps_host_tmpfiles_directory": os.path.join(self.mps, "tmpfiles.d"),
                "preflight_control_binary": self.control}


def standin_wrapper(standin, gpus, python="/usr/bin/python3"):
    """The lane's MPS control binary: the project's stand-in with the lane's GPU count."""
    return ("#!/bin/sh\n"
            "# gpulab.mps cluster lane: STAND-IN for nvidia-cuda-mps-control (tests/standins), %d GPUs like the lane's node\n"
            "GPULAB_STANDIN_GPUS=%d\nexport GPULAB_STANDIN_GPUS\n"
            "exec %s %s \"$@\"\n") % (gpus, gpus, python, standin)


def inventory(paths, layout, python, tools_image, replicas=20, extra=None):
    """The lane's inventory (a dict, written as JSON): localhost, the lane's cluster as an existing one, the host stages
    on the stand-ins; `extra`: the scenario's variables (owner, mode, image, ...)."""
    group_vars = dict(paths.host_vars())
    group_vars.update({
        "gpulab_become": False,
        "gpulab_kubernetes": "auto",
        "gpulab_workload": False,
        # the lane's cluster, an existing one (the production path of kind_cluster)
        "kind_cluster_target": "existing",
        "kind_cluster_kubeconfig": layout.kubeconfig("admin"),
        "kind_cluster_context": "lane",
        "device_plugin_nodes": [{"name": layout.node_name, "gpus": "all"}],
        "device_plugin_replicas": replicas,
        # No GPU here: the host dial-tone asks the daemon `ps` and runs no CUDA client (molecule does the same).
        "mps_dialtone_client_check": False,
        # The pods' image: busybox, python3 and the stand-in nvidia-cuda-mps-control (no NVIDIA runtime injects it).
        "mps_dialtone_pod_image": tools_image,
        # fleet.yml
        "fleet_kubernetes_node": layout.node_name,
        "fleet_kubeconfig": layout.kubeconfig("admin"),
        "fleet_kube_context": "lane",
        "fleet_drain_timeout": 90,
        "fleet_health_settle": 1,
    })
    group_vars.update(extra or {})
    return {"all": {"children": {"gpu_hosts": {
        "hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": python}},
        "vars": group_vars}}}}


_RECAP_RE = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$")


def recap(text):
    """{host: {ok, changed, unreachable, failed, skipped, rescued, ignored}} from ansible-playbook's PLAY RECAP."""
    out = {}
    lines = text.splitlines()
    try:
        start = max(i for i, line in enumerate(lines) if line.startswith("PLAY RECAP"))
    except ValueError:
        return out
    for line in lines[start + 1:]:
        match = _RECAP_RE.match(line.strip())
        if match:
            out[match.group(1)] = dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2)))
    return out


def read_record(path):
    """The entries of a gpulab_lane_record file (a missing file: none)."""
    entries = []
    try:
        with open(path) as handle:
            for line in handle:
                if line.strip():
                    entries.append(json.loads(line))
    except OSError:
        pass
    return entries


def entries_of(record, task, status=None):
    """The entries of a task (its exact name, or a role's `role : task`), optionally only of some statuses."""
    statuses = (status,) if isinstance(status, str) else status
    return [e for e in record if (e["task"] == task or e["task"].endswith(" : " + task))
            and (statuses is None or e["status"] in statuses)]


def first_time(record, task, status=("ok", "changed")):
    found = entries_of(record, task, status)
    return found[0]["t"] if found else None


def changed_tasks(record):
    return ["%s (%s)" % (e["task"], e["host"]) for e in record if e["status"] == "changed"]


def nvidia_lines(describe):
    """The lines of `kubectl describe node` that name nvidia.com (seed 004's `kubectl describe node | grep nvidia.com`)."""
    return [line.rstrip() for line in describe.splitlines() if "nvidia.com" in line]


def node_state(node):
    """What of a Node the collection may change: its labels and annotations of nvidia.com and gpulab.mps, whether it is
    cordoned, and its nvidia.com resources."""
    meta = node.get("metadata") or {}
    status = node.get("status") or {}

    def ours(mapping):
        return dict((k, v) for k, v in (mapping or {}).items() if k.startswith(("nvidia.com/", "gpulab.mps/")))
    return {"labels": ours(meta.get("labels")), "annotations": ours(meta.get("annotations")),
            "unschedulable": bool((node.get("spec") or {}).get("unschedulable")),
            "allocatable": dict((k, v) for k, v in (status.get("allocatable") or {}).items()
                                if k.startswith("nvidia.com/"))}


def leftovers(before, after, objects, runtime_classes_before=(), runtime_classes_after=()):
    """What the collection left on the cluster after its teardown, as sentences ([] when nothing).

    before, after: node_state() of the node before the first site.yml and after the teardown; objects: the items of
    `kubectl get pods,daemonsets,configmaps,namespaces -A -l app.kubernetes.io/managed-by=gpulab.mps`;
    runtime_classes_*: the names of the RuntimeClasses before the first run and now."""
    problems = []
    for item in objects:
        meta = item.get("metadata") or {}
        problems.append("%s %s%s is left (labelled %s)" % (
            item.get("kind"), ("%s/" % meta["namespace"]) if meta.get("namespace") else "", meta.get("name"),
            MANAGED_BY))
    for field in ("labels", "annotations"):
        for key in sorted(set(before[field]) | set(after[field])):
            if before[field].get(key) != after[field].get(key):
                problems.append("node %s %s is %s, it was %s before the collection ran" % (
                    field[:-1], key, json.dumps(after[field].get(key)), json.dumps(before[field].get(key))))
    if after["unschedulable"] and not before["unschedulable"]:
        problems.append("the node is left cordoned")
    for name in sorted(set(runtime_classes_after) - set(runtime_classes_before)):
        problems.append("RuntimeClass %s is left" % name)
    return problems


def daemon_commands(control_log):
    """The set_default_* commands a (stand-in) MPS daemon logged, in order, each once."""
    seen = []
    for match in re.finditer(r"Cmd:(set_default_\S+(?: \S+)*)", control_log or ""):
        if match.group(1) not in seen:
            seen.append(match.group(1))
    return seen
