# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Kind lab clusters with GPUs and the MPS pipe: the Kind config and the kind CLI's output.

This is a private module_utils of gpulab.mps: its API may change without notice.

The config follows NVIDIA nvkind: the host's Docker runs nvidia-container-runtime with
`accept-nvidia-visible-devices-as-volume-mounts = true`, and each GPU worker asks for its GPUs
by mounting /dev/null at /var/run/nvidia-container-devices/<all|index> (or, with CDI, at
/var/run/nvidia-container-devices/cdi/runtime.nvidia.com/gpu/<all|index>). Every node also
gets the host's MPS pipe directory at the same path, so that pods can reach the host's MPS
control daemon through a hostPath volume (the seed lab).
"""

from __future__ import annotations

import posixpath
import re

API_VERSION = "kind.x-k8s.io/v1alpha4"
LAYOUTS = ("single", "per_gpu")
DEVICE_MOUNTS = ("volume", "cdi")
GPU_LABEL = "nvidia.com/gpu.present"
NO_CLUSTERS = "No kind clusters found."

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class KindConfigError(ValueError):
    """A Kind lab that cannot be built as asked; the message says what to change."""


def check_name(name):
    """A kind cluster name: a DNS label short enough for its node names (<name>-control-plane)."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or len(name) > 49:
        raise KindConfigError(
            "kind cluster name %r must be lower-case letters, digits and '-', at most 49 characters" % (name,))
    return name


def _indices(gpus):
    if isinstance(gpus, bool):
        raise KindConfigError("gpus must be a count or a list of GPU indices, got %r" % (gpus,))
    if isinstance(gpus, int):
        if gpus < 0:
            raise KindConfigError("GPU count must not be negative, got %d" % gpus)
        return list(range(gpus))
    out = []
    for item in gpus or []:
        index = item.get("index") if isinstance(item, dict) else item
        try:
            out.append(int(index))
        except (TypeError, ValueError):
            raise KindConfigError("GPU %r has no integer index" % (item,))
    if len(set(out)) != len(out):
        raise KindConfigError("GPU indices %s repeat" % out)
    return sorted(out)


def device_mount(device, style="volume"):
    """The extraMount that hands GPU `device` ("all" or an index) to a node, the nvkind way."""
    if style == "cdi":
        path = "/var/run/nvidia-container-devices/cdi/runtime.nvidia.com/gpu/%s" % device
    elif style == "volume":
        path = "/var/run/nvidia-container-devices/%s" % device
    else:
        raise KindConfigError("device mount style must be one of %s, got %r" % (", ".join(DEVICE_MOUNTS), style))
    return {"hostPath": "/dev/null", "containerPath": path}


def gpu_workers(gpus, layout="single"):
    """[{"gpus": "all" | [indices]}] for each GPU worker of the layout."""
    indices = _indices(gpus)
    if layout not in LAYOUTS:
        raise KindConfigError("layout must be one of %s, got %r" % (", ".join(LAYOUTS), layout))
    if not indices:
        return []
    if layout == "single":
        return [{"gpus": "all"}]
    return [{"gpus": [i]} for i in indices]


def node_names(name, workers):
    """Kind's node (and container) names: <name>-control-plane, <name>-worker, <name>-worker2, ..."""
    return ["%s-control-plane" % name] + ["%s-worker%s" % (name, "" if i == 0 else i + 1) for i in range(workers)]


def kind_config(gpus, name="gpulab", layout="single", pipe_directory="/tmp/nvidia-mps", pipe_mount=True,
                node_image=None, device_mount_style="volume", cpu_workers=0, extra_mounts=None):
    """The Kind cluster config (a dict) for a host with these GPUs.

    gpus: a count, a list of indices, or the gpus list of gpulab.mps.gpu_info.
    layout: "single" (one GPU worker with all GPUs) or "per_gpu" (one worker per GPU).
    """
    check_name(name)
    if pipe_mount:
        if not isinstance(pipe_directory, str) or not posixpath.isabs(pipe_directory):
            raise KindConfigError("MPS pipe directory %r must be an absolute path" % (pipe_directory,))
        pipe_directory = posixpath.normpath(pipe_directory)
    if isinstance(cpu_workers, bool) or int(cpu_workers) < 0:
        raise KindConfigError("cpu_workers must be a count, got %r" % (cpu_workers,))
    workers = gpu_workers(gpus, layout)
    common_mounts = []
    if pipe_mount:
        common_mounts.append({"hostPath": pipe_directory, "containerPath": pipe_directory})
    for mount in extra_mounts or []:
        if not isinstance(mount, dict) or not mount.get("hostPath") or not mount.get("containerPath"):
            raise KindConfigError("extra mount %r needs hostPath and containerPath" % (mount,))
        common_mounts.append(dict(mount))

    def node(role, extra=None, labels=None):
        entry = {"role": role}
        if node_image:
            entry["image"] = node_image
        if labels:
            entry["labels"] = labels
        mounts = [dict(m) for m in common_mounts] + list(extra or [])
        if mounts:
            entry["extraMounts"] = mounts
        return entry

    nodes = [node("control-plane")]
    for worker in workers:
        devices = ["all"] if worker["gpus"] == "all" else worker["gpus"]
        nodes.append(node("worker", [device_mount(d, device_mount_style) for d in devices], {GPU_LABEL: "true"}))
    nodes.extend(node("worker") for dummy in range(int(cpu_workers)))
    return {"kind": "Cluster", "apiVersion": API_VERSION, "name": name, "nodes": nodes}


def gpu_nodes(config, gpus=None):
    """[{"name": node, "gpus": "all" | [indices]}] for the GPU workers of a Kind config (by node name)."""
    name = config.get("name") or "kind"
    workers = [n for n in config.get("nodes", []) if n.get("role") == "worker"]
    names = node_names(name, len(workers))[1:]
    result = []
    for node_name, node in zip(names, workers):
        devices = []
        for mount in node.get("extraMounts", []):
            path = mount.get("containerPath", "")
            if mount.get("hostPath") == "/dev/null" and path.startswith("/var/run/nvidia-container-devices/"):
                devices.append(path.rsplit("/", 1)[1])
        if not devices:
            continue
        result.append({"name": node_name, "gpus": "all" if "all" in devices else sorted(int(d) for d in devices)})
    return result


def parse_clusters(stdout):
    """Cluster names from `kind get clusters` (it prints "No kind clusters found." on stderr when none)."""
    names = []
    for line in (stdout or "").splitlines():
        line = line.strip()
        if line and line != NO_CLUSTERS and not line.startswith(("ERROR", "WARNING", "enabling experimental")):
            names.append(line)
    return names


def parse_nodes(stdout):
    """Node names from `kind get nodes --name NAME`, sorted."""
    return sorted(line.strip() for line in (stdout or "").splitlines()
                  if line.strip() and not line.startswith(("ERROR", "WARNING", "No kind nodes", "enabling")))


def runtime_class(name="nvidia", handler=None):
    """The RuntimeClass that sends pods to the NVIDIA runtime that nvidia-ctk configured in containerd."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise KindConfigError("RuntimeClass name %r is not a DNS label" % (name,))
    handler = handler or name
    if not _NAME_RE.match(handler):
        raise KindConfigError("RuntimeClass handler %r is not a DNS label" % (handler,))
    return {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "gpulab.mps"}},
            "handler": handler}
