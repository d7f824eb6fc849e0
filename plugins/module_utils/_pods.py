# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The pods of gpulab.mps - the MPS dial-tone pod (seed 001) and the workload pod - and the diagnosis of what
`echo ps | nvidia-cuda-mps-control` said in a pod.

This is a private module_utils of gpulab.mps: its API may change without notice.

One builder, mps_pod(), makes every pod that reaches MPS, so the dial-tone and the workloads reach it the
same way. Two ways for a pod to reach MPS (the plan's owner):
- host: the host's MPS daemon (role mps_host) through its pipe directory, mounted into the Kind
  node and from there into the pod as a hostPath volume; /dev/shm is a memory emptyDir.
- plugin: the device plugin's own MPS daemon; the pod requests one replica of a GPU resource and
  the plugin mounts the pipe and sets CUDA_MPS_PIPE_DIRECTORY itself.
"""

from __future__ import annotations

import posixpath
import re

from ansible_collections.gpulab.mps.plugins.module_utils._mps_output import (
    CONNECTION_REFUSED, NO_DAEMON, SERVER_NOT_FOUND, TRANSPORT_NOT_CONNECTED, OutputError, parse_ps)

SOURCES = ("host", "plugin")
DIALTONE_COMMAND = "echo ps | nvidia-cuda-mps-control"
WORKLOAD_FILES_PATH = "/opt/gpulab-workloads"

_NOT_FOUND_RE = re.compile(r"(executable file not found|not found in \$PATH|: not found|No such file or directory)")
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# What the builder itself sets: a caller's env (a QoS class's, _qos.pod_env) must not change how the pod reaches MPS.
_BUILDER_ENV = ("CUDA_MPS_PIPE_DIRECTORY", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES")


class DialtoneError(ValueError):
    """A pod that cannot be built as asked."""


def _labels(app):
    return {"app.kubernetes.io/name": app, "app.kubernetes.io/managed-by": "gpulab.mps"}


def _check_name(what, value):
    if not isinstance(value, str) or not _NAME_RE.match(value) or len(value) > 63:
        raise DialtoneError("%s %r is not a DNS label" % (what, value))


def _check_env(env):
    """A container's extra env ([{name, value}], e.g. a QoS class's): each name once, none the builder sets."""
    seen = set()
    for item in env or []:
        if not isinstance(item, dict) or set(item) != {"name", "value"} or not isinstance(item["name"], str) \
                or not _ENV_NAME_RE.match(item["name"]) or not isinstance(item["value"], str):
            raise DialtoneError("env entries must be {name: VARIABLE, value: string}, got %r" % (item,))
        if item["name"] in _BUILDER_ENV:
            raise DialtoneError("env must not set %s: the pod builder sets it from the plan" % item["name"])
        if item["name"] in seen:
            raise DialtoneError("env sets %s twice" % item["name"])
        seen.add(item["name"])
    return list(env or [])


def mps_pod(name, namespace, image, command, container_name, app, source="host", pipe_directory="/tmp/nvidia-mps",
            host_ipc=False, shm_size="1Gi", runtime_class="nvidia", node_name=None, resource=None,
            active_deadline_seconds=660, grace_seconds=1, image_pull_policy="IfNotPresent", env=None, volumes=None,
            mounts=None):
    """A pod (a dict) whose one container reaches MPS as `source` says, ending by itself after the deadline.

    source host: hostPath pipe directory at the same path, CUDA_MPS_PIPE_DIRECTORY set to it,
    NVIDIA_VISIBLE_DEVICES=all through the nvidia runtime class unless a device plugin hands out `resource`,
    /dev/shm a memory emptyDir. source plugin: one replica of `resource` (default nvidia.com/gpu); the plugin
    provides the rest. env, volumes, mounts: more of each, after these.
    """
    if source not in SOURCES:
        raise DialtoneError("source must be one of %s, got %r" % (", ".join(SOURCES), source))
    _check_name("pod name", name)
    _check_name("namespace", namespace)
    container_env = [{"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "compute,utility"}] + _check_env(env)
    container_mounts = list(mounts or []) + [{"name": "dshm", "mountPath": "/dev/shm"}]
    shm = {"medium": "Memory"}
    if shm_size:
        shm["sizeLimit"] = str(shm_size)
    pod_volumes = list(volumes or []) + [{"name": "dshm", "emptyDir": shm}]
    container = {"name": container_name, "image": image, "imagePullPolicy": image_pull_policy,
                 "command": [str(c) for c in command], "env": container_env, "volumeMounts": container_mounts}
    if source == "host":
        if not isinstance(pipe_directory, str) or not posixpath.isabs(pipe_directory):
            raise DialtoneError("pipe directory %r must be an absolute path" % (pipe_directory,))
        pipe_directory = posixpath.normpath(pipe_directory)
        container_env.insert(0, {"name": "CUDA_MPS_PIPE_DIRECTORY", "value": pipe_directory})
        if not resource:
            # No device plugin hands out a GPU: ask the nvidia runtime for all of them.
            container_env.insert(1, {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"})
        container_mounts.append({"name": "mps-pipe", "mountPath": pipe_directory})
        pod_volumes.append({"name": "mps-pipe", "hostPath": {"path": pipe_directory, "type": "Directory"}})
    if resource or source == "plugin":
        container["resources"] = {"limits": {resource or "nvidia.com/gpu": 1}}
    spec = {
        "restartPolicy": "Never",
        "hostIPC": bool(host_ipc),
        "terminationGracePeriodSeconds": int(grace_seconds),
        # The pod ends by itself even when the play that made it dies before its cleanup.
        "activeDeadlineSeconds": int(active_deadline_seconds),
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [container],
        "volumes": pod_volumes,
    }
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    if node_name:
        spec["nodeName"] = node_name
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": _labels(app)}, "spec": spec}


def dialtone_pod(name="mps-dialtone", namespace="default", image="nvcr.io/nvidia/cuda:12.8.1-base-ubuntu24.04",
                 source="host", pipe_directory="/tmp/nvidia-mps", host_ipc=False, shm_size="1Gi",
                 runtime_class="nvidia", node_name=None, resource=None, lifetime_seconds=600,
                 image_pull_policy="IfNotPresent", env=None):
    """The dial-tone pod (a dict): a container that sleeps `lifetime_seconds` and then ends by itself.

    env: more environment ([{name, value}]), such as a QoS class's (_qos.pod_env).
    """
    if not isinstance(lifetime_seconds, int) or isinstance(lifetime_seconds, bool) or lifetime_seconds < 30:
        raise DialtoneError("lifetime_seconds must be a whole number of at least 30, got %r" % (lifetime_seconds,))
    return mps_pod(name, namespace, image, ["sleep", str(lifetime_seconds)], "dialtone", "mps-dialtone", source,
                   pipe_directory, host_ipc, shm_size, runtime_class, node_name, resource, lifetime_seconds + 60, 1,
                   image_pull_policy, env=env)


def workload_pod(files, command, name="gpulab-workload", namespace="default", image="nvcr.io/nvidia/pytorch:25.01-py3",
                 source="host", pipe_directory="/tmp/nvidia-mps", host_ipc=False, shm_size="1Gi",
                 runtime_class="nvidia", node_name=None, resource=None, timeout=300, image_pull_policy="IfNotPresent",
                 env=None):
    """The workload pod and the ConfigMap that carries its files ({name: content}), in apply order.

    `command` runs the runner from WORKLOAD_FILES_PATH, where the ConfigMap is mounted read-only. env: more
    environment ([{name, value}]), such as a QoS class's (_qos.pod_env).
    """
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 30:
        raise DialtoneError("timeout must be a whole number of at least 30, got %r" % (timeout,))
    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "%s-files" % name, "namespace": namespace, "labels": _labels("gpulab-workload")},
                  "data": dict((k, v.rstrip("\n") + "\n") for k, v in sorted(files.items()))}
    pod = mps_pod(name, namespace, image, command, "workload", "gpulab-workload", source, pipe_directory, host_ipc,
                  shm_size, runtime_class, node_name, resource, timeout + 120, 5, image_pull_policy,
                  env=[{"name": "PYTHONUNBUFFERED", "value": "1"}] + list(env or []),
                  # 0644: the scripts run as `python3 FILE`
                  volumes=[{"name": "files", "configMap": {"name": "%s-files" % name, "defaultMode": 420}}],
                  mounts=[{"name": "files", "mountPath": WORKLOAD_FILES_PATH, "readOnly": True}])
    return [config_map, pod]


def diagnose(rc, stdout="", stderr="", pipe_directory="/tmp/nvidia-mps", node=None, pod=None):
    """What the dial-tone output means: {"ok", "state", "message"}.

    States: answered (the daemon answered `ps`: a table, "Server not found", or nothing when a server
    runs without clients), daemon_died (Transport endpoint is not connected),
    refused (Connection refused), no_daemon (nothing listens where the pod looks), no_binary (the
    image lacks nvidia-cuda-mps-control), error (anything else).
    """
    out = "%s\n%s" % (stdout or "", stderr or "")
    where = "pod %s" % pod if pod else "the pod"
    if node:
        where += " on node %s" % node
    tail = out.strip()[-400:]
    if TRANSPORT_NOT_CONNECTED in out:
        return {"ok": False, "state": "daemon_died", "message": (
            "MPS dial-tone failed in %s: 'Transport endpoint is not connected': the MPS control daemon behind "
            "%s died (its socket is still there). Restart it on the GPU host (site.yml --tags mps, or "
            "systemctl restart nvidia-mps) and read control.log in its log directory. If the directory itself "
            "was deleted and re-created, the Kind nodes and pods still hold the old one: recreate them."
            % (where, pipe_directory))}
    if CONNECTION_REFUSED in out:
        return {"ok": False, "state": "refused", "message": (
            "MPS dial-tone failed in %s: 'Connection refused' on %s: permissions or namespaces. The socket "
            "exists but no daemon accepts this client: the daemon runs as another user than the pod (run the pod "
            "as the daemon's user, or start the daemon as root), or the socket is a leftover that no daemon "
            "listens on (a quit leaves the sockets behind; restart the daemon), or the pod sees another copy "
            "of the directory than the daemon (mount the host directory itself into the Kind node and the pod)."
            % (where, pipe_directory))}
    if NO_DAEMON in out:
        return {"ok": False, "state": "no_daemon", "message": (
            "MPS dial-tone failed in %s: no MPS control daemon at %s as the pod sees it. Check that the host "
            "daemon runs (site.yml --tags mps), that the Kind config mounts %s into every node (recreate the "
            "cluster after changing it), and that CUDA_MPS_PIPE_DIRECTORY in the pod names the mounted "
            "directory." % (where, pipe_directory, pipe_directory))}
    if rc in (126, 127) or (rc and _NOT_FOUND_RE.search(out) and "nvidia-cuda-mps-control" in out):
        return {"ok": False, "state": "no_binary", "message": (
            "MPS dial-tone failed in %s: nvidia-cuda-mps-control is not in the container. Run the pod with "
            "runtimeClassName nvidia (the NVIDIA runtime injects the MPS binaries with the compute "
            "capability) or use an image that ships them. Output: %s" % (where, tail))}
    if rc == 0 and not out.strip():
        # A daemon with a server but no client answers `ps` with nothing at all (H100, driver 580).
        return {"ok": True, "state": "answered", "clients": [], "message": (
            "MPS daemon answered in %s through %s (a server runs, no client attached)" % (where, pipe_directory))}
    if rc == 0 and (SERVER_NOT_FOUND in out or (stdout or "").lstrip().startswith("PID")):
        try:
            clients = parse_ps(stdout)
        except OutputError as error:
            return {"ok": False, "state": "error", "message": (
                "MPS dial-tone in %s gave an answer that is not a ps table (%s): %s" % (where, error, tail))}
        return {"ok": True, "state": "answered", "clients": clients, "message": (
            "MPS daemon answered in %s through %s (%s)" % (
                where, pipe_directory,
                "no server running yet" if SERVER_NOT_FOUND in out else "%d client(s)" % len(clients)))}
    return {"ok": False, "state": "error", "message": (
        "MPS dial-tone in %s gave an unexpected answer (exit %s): %s" % (where, rc, tail or "no output"))}
