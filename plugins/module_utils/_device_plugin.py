# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The NVIDIA device plugin with MPS sharing: its configuration, its manifests, and what nodes must advertise.

This is a private module_utils of gpulab.mps: its API may change without notice.

Everything here is pure (data in, data out) so that the same code renders the manifests that the
device_plugin role applies and the ones that tests/render validates offline.

Two modes:
- aggregate: the upstream image and config format; all GPUs of a node are one resource
  `nvidia.com/gpu` with `replicas` per GPU.
- individual: per-GPU resource names (`nvidia.com/gpu0`, `nvidia.com/gpu1`, ...) in the format of
  the device-plugin fork of seed 004 (`individualGPU.gpuConfigs`). Upstream (v0.20.0) cannot name
  resources per GPU at all: right after loading its config, both of its binaries call
  DisableResourceNamingInConfig, which drops `rename` and `devices` from `sharing.timeSlicing` and
  `sharing.mps` alike (recorded in tests/render/fixtures/device_plugin_loaders.json). So this mode needs the
  fork's image, whose Allocate answers NVIDIA_VISIBLE_DEVICES=0 for any GPU: on a node with more
  than one GPU a pod of gpu2 would get GPU 0, and such nodes are refused unless the user opts in.

Two owners of the MPS control daemon, never both on one node:
- plugin: the plugin's own `mps-control-daemon` DaemonSet runs the daemon on every node labelled
  `nvidia.com/mps.capable=true` and `gpulab.mps/mps-owner=plugin`. Upstream sets a pinned memory
  limit of total/replicas per device and 100/replicas active threads; the fork sets the GPU's TOTAL
  memory unless the config names `pinnedMemoryLimit` per GPU, so this module always names it.
  The host daemon of the mps_host role must not run there.
- host: the host daemon of mps_host serves the pods through its mounted pipe directory (the seed
  lab); the host's plan (_plan) gives it the per-replica limits of this module's plan. The plugin
  then only counts replicas for the scheduler (`sharing.timeSlicing`, same replicas) and runs no
  MPS daemon; in both modes (individual: the fork's per-GPU counts, with time-slicing).
"""

from __future__ import annotations

import hashlib
import json
import re

from ansible_collections.gpulab.mps.plugins.module_utils._nvml import mps_client_cap
from ansible_collections.gpulab.mps.plugins.module_utils._sizes import replica_memory_mib

AGGREGATE = "aggregate"
INDIVIDUAL = "individual"
MODES = (AGGREGATE, INDIVIDUAL)

OWNER_PLUGIN = "plugin"
OWNER_HOST = "host"
OWNERS = (OWNER_PLUGIN, OWNER_HOST)

CONFIG_NAMES = {AGGREGATE: "aggregate-gpu-mps", INDIVIDUAL: "individual-gpu-mps"}

LABEL_CONFIG = "nvidia.com/device-plugin.config"
LABEL_MPS_CAPABLE = "nvidia.com/mps.capable"
LABEL_GPU_PRESENT = "nvidia.com/gpu.present"
LABEL_OWNER = "gpulab.mps/mps-owner"

RESOURCE_DOMAIN = "nvidia.com"
DEFAULT_RESOURCE = "nvidia.com/gpu"
DEFAULT_NAME_PATTERN = "gpu%d"

# The upstream release whose chart these manifests follow, and whose binaries tests/gpu/device_plugin runs on the
# GPU host (built from source at v0.20.0, commit 1b826acc).
UPSTREAM_VERSION = "v0.20.0"
UPSTREAM_IMAGE = "nvcr.io/nvidia/k8s-device-plugin:%s" % UPSTREAM_VERSION
DEFAULT_NAMESPACE = "nvidia-device-plugin"
DEFAULT_NAME = "nvidia-device-plugin"
MPS_ROOT = "/run/nvidia/mps"

MIN_REPLICAS = 2

_CC_RE = re.compile(r"^\s*(\d+)(?:\.(\d+))?\s*$")
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class DevicePluginError(ValueError):
    """A request the device plugin could not serve; the message says what to change."""


def compute_capability(value):
    """(major, minor) from "9.0", 9.0, [9, 0] or (9, 0); None when unknown."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise DevicePluginError("compute capability %r is not (major, minor)" % (value,))
        return int(value[0]), int(value[1])
    if isinstance(value, dict):
        return int(value["major"]), int(value["minor"])
    match = _CC_RE.match(str(value))
    if not match:
        raise DevicePluginError("compute capability %r is not major.minor" % (value,))
    return int(match.group(1)), int(match.group(2) or 0)


def client_cap(gpu):
    """MPS client cap of one GPU (a gpu_info entry): its mps_client_cap, else from its compute capability."""
    cap = gpu.get("mps_client_cap")
    if cap:
        return int(cap)
    cc = compute_capability(gpu.get("compute_capability"))
    return mps_client_cap(*cc) if cc is not None else mps_client_cap(0)


def _gpu_label(gpu):
    return "GPU %s (%s)" % (gpu.get("index"), gpu.get("name") or gpu.get("uuid") or "unknown model")


def normalize_gpus(gpus):
    """Check a gpu_info `gpus` list and return it sorted by index, with integer indices."""
    if not isinstance(gpus, (list, tuple)) or not gpus:
        raise DevicePluginError(
            "no GPUs given: the device plugin needs the gpus list of gpulab.mps.gpu_info "
            "(is the NVIDIA driver loaded on this node?)")
    out = []
    seen = set()
    for gpu in gpus:
        if not isinstance(gpu, dict) or "index" not in gpu:
            raise DevicePluginError("GPU entry %r has no index: pass the gpus list of gpulab.mps.gpu_info" % (gpu,))
        index = int(gpu["index"])
        if index in seen:
            raise DevicePluginError("GPU index %d appears twice in the gpus list" % index)
        seen.add(index)
        if gpu.get("memory_total_mib") in (None, ""):
            raise DevicePluginError("%s has no memory_total_mib: pass the gpus list of gpulab.mps.gpu_info"
                                    % _gpu_label(gpu))
        entry = dict(gpu)
        entry["index"] = index
        entry["memory_total_mib"] = int(gpu["memory_total_mib"])
        out.append(entry)
    return sorted(out, key=lambda g: g["index"])


def replicas_by_gpu(gpus, replicas, per_gpu=None, mode=AGGREGATE):
    """{index: replicas} after checking every value against 2..client cap of its GPU.

    `per_gpu` ({index: replicas}) overrides `replicas` for some GPUs; only individual mode can
    honour that (aggregate mode has one replica count for the one resource).
    """
    per_gpu = dict((int(k), v) for k, v in (per_gpu or {}).items())
    if per_gpu and mode != INDIVIDUAL:
        raise DevicePluginError(
            "per-GPU replicas (%s) need mode individual: in aggregate mode all GPUs share one resource "
            "nvidia.com/gpu with one replica count" % ", ".join("%d=%s" % kv for kv in sorted(per_gpu.items())))
    indices = set(g["index"] for g in gpus)
    unknown = sorted(set(per_gpu) - indices)
    if unknown:
        raise DevicePluginError("per-GPU replicas name GPU index %s, but the node has GPUs %s (indices as the node "
                                "sees them): remove them from device_plugin_replicas_per_gpu or name a GPU it has"
                                % (", ".join(map(str, unknown)), ", ".join(str(i) for i in sorted(indices))))
    result = {}
    for gpu in gpus:
        value = per_gpu.get(gpu["index"], replicas)
        try:
            count = int(value)
            if isinstance(value, bool) or str(count) != str(value).strip():
                raise ValueError
        except (TypeError, ValueError):
            raise DevicePluginError("replicas for %s must be a whole number, got %r" % (_gpu_label(gpu), value))
        cap = client_cap(gpu)
        if count < MIN_REPLICAS:
            raise DevicePluginError(
                "replicas for %s is %d: MPS sharing needs at least %d replicas per GPU (with 1, use the "
                "device plugin without sharing)" % (_gpu_label(gpu), count, MIN_REPLICAS))
        if count > cap:
            raise DevicePluginError(
                "replicas for %s is %d, above the MPS client cap of %d for compute capability %s "
                "(48 from Volta, 7.0, on; 16 before): lower the replicas"
                % (_gpu_label(gpu), count, cap, gpu.get("compute_capability", "unknown")))
        result[gpu["index"]] = count
    return result


def resource_name(mode, index=None, name_pattern=DEFAULT_NAME_PATTERN):
    """The extended resource a GPU is advertised under."""
    if mode == AGGREGATE:
        return DEFAULT_RESOURCE
    if "%d" not in name_pattern:
        raise DevicePluginError("name pattern %r must contain %%d (for example gpu%%d)" % name_pattern)
    short = name_pattern % index
    if not _DNS_LABEL_RE.match(short):
        raise DevicePluginError("name pattern %r gives %r, not a valid resource name" % (name_pattern, short))
    return "%s/%s" % (RESOURCE_DOMAIN, short)


def _check_mode_owner(mode, owner):
    if mode not in MODES:
        raise DevicePluginError("mode must be one of %s, got %r" % (", ".join(MODES), mode))
    if owner not in OWNERS:
        raise DevicePluginError("MPS owner must be one of %s, got %r" % (", ".join(OWNERS), owner))
    if mode == INDIVIDUAL and owner == OWNER_HOST:
        # Seen on the H200 (docs/evidence/2026-12-03-h200-device-plugin.md): the fork's individualGPU waits for its
        # own MPS daemon's health and registers nothing without it; upstream v0.20.0 drops rename and devices.
        raise DevicePluginError(
            "mode individual cannot work with owner host: per-GPU resources need the seed-004 fork, whose "
            "individualGPU checks the health of its own MPS daemon and registers no resource without it (seen on "
            "an H200), and the upstream plugin drops rename/devices. Use gpulab_mps_owner: plugin with the fork "
            "image, or mode aggregate with owner host.")


FORK_ALLOCATE_FAULT = (
    "the fork's Allocate answers NVIDIA_VISIBLE_DEVICES=0 (a relative index) for every per-GPU resource, so on a "
    "node with several GPUs a pod of nvidia.com/gpu2 would run on GPU 0")


def check_fork_node(gpus, allow_multi_gpu=False, node="this node"):
    """Refuse individual mode (the fork) on a node that sees more than one GPU, unless the user opted in."""
    if len(gpus) > 1 and not allow_multi_gpu:
        raise DevicePluginError(
            "mode individual runs the seed-004 fork, and %s sees %d GPUs: %s. Give each GPU its own node (Kind: "
            "kind_cluster_layout per_gpu), use mode aggregate, or accept it with "
            "device_plugin_fork_allow_multi_gpu_nodes: true" % (node, len(gpus), FORK_ALLOCATE_FAULT))


def visible_gpus(gpus, visible="all"):
    """The GPUs a node sees, re-indexed from 0 as the container runtime shows them to the plugin.

    gpus: the host's gpu_info list; visible: "all" or a list of host indices (a Kind worker that
    was handed some GPUs). Each entry keeps its host index as host_index.
    """
    ordered = normalize_gpus(gpus)
    if visible in (None, "all"):
        chosen = ordered
    else:
        wanted = set(int(i) for i in visible)
        chosen = [g for g in ordered if g["index"] in wanted]
        missing = wanted - set(g["index"] for g in chosen)
        if missing:
            raise DevicePluginError("the node is handed GPU %s, which the host does not have (it has %s)" % (
                ", ".join(str(i) for i in sorted(missing)), ", ".join(str(g["index"]) for g in ordered)))
    out = []
    for new_index, gpu in enumerate(chosen):
        entry = dict(gpu)
        entry["host_index"] = gpu.get("host_index", gpu["index"])
        entry["index"] = new_index
        out.append(entry)
    return out


def plan(gpus, mode=AGGREGATE, replicas=2, per_gpu_replicas=None, owner=OWNER_PLUGIN,
         name_pattern=DEFAULT_NAME_PATTERN, visible="all", allow_multi_gpu=None, node=None):
    """What a node with these GPUs gets: per GPU its resource, replicas, memory and threads per replica.

    Returns a dict: mode, owner, config_name, labels (for the node), gpus (list), resources
    ({name: count}). Memory per replica is the seed 004 and upstream formula: total MiB // replicas.
    `visible` limits the plan to the GPUs a node is handed (indices re-numbered from 0).
    allow_multi_gpu: None plans a host (its nodes are checked later, by node_plans); True or False
    plans one node, and False refuses individual mode (the fork) there when it sees several GPUs.
    """
    _check_mode_owner(mode, owner)
    gpus = normalize_gpus(gpus)
    if visible not in (None, "all"):
        gpus = visible_gpus(gpus, visible)
    counts = replicas_by_gpu(gpus, replicas, per_gpu_replicas, mode)
    if mode == INDIVIDUAL and allow_multi_gpu is not None:
        check_fork_node(gpus, allow_multi_gpu, "node %s" % node if node else "this node")
    rows = []
    resources = {}
    for gpu in gpus:
        count = counts[gpu["index"]]
        name = resource_name(mode, gpu["index"], name_pattern)
        rows.append({
            "index": gpu["index"],
            "host_index": gpu.get("host_index", gpu["index"]),
            "uuid": gpu.get("uuid"),
            "name": gpu.get("name"),
            "resource": name,
            "replicas": count,
            "memory_total_mib": gpu["memory_total_mib"],
            "memory_per_replica_mib": replica_memory_mib(gpu["memory_total_mib"], count),
            "active_thread_percentage": 100 // count,
            "mps_client_cap": client_cap(gpu),
        })
        resources[name] = resources.get(name, 0) + count
    return {
        "mode": mode,
        "owner": owner,
        "config_name": CONFIG_NAMES[mode],
        "labels": node_labels(mode, owner),
        "gpus": rows,
        "resources": resources,
    }


def node_plans(gpus, nodes, **kwargs):
    """[{"name", "plan"}] for each node ({"name", "gpus": "all" | [host indices]}) of a GPU host."""
    if not isinstance(nodes, (list, tuple)) or not nodes:
        raise DevicePluginError("no nodes given: name the Kubernetes nodes of this GPU host ({name, gpus})")
    allow = bool(kwargs.pop("allow_multi_gpu", False))
    out = []
    for node in nodes:
        if not isinstance(node, dict) or not node.get("name"):
            raise DevicePluginError("node %r needs a name" % (node,))
        out.append({"name": node["name"], "plan": plan(gpus, visible=node.get("gpus", "all"), node=node["name"],
                                                       allow_multi_gpu=allow, **kwargs)})
    return out


def sharing_of(host_plan):
    """(gpus, {mode, replicas, per_gpu_replicas, name_pattern, owner}) of a host's plan (_plan.build_plan): what the
    node plans and the manifests are made from, read from the plan's sharing section and never from the settings
    again. Raises DevicePluginError when the plan has no device plugin planned."""
    if not isinstance(host_plan, dict) or not isinstance(host_plan.get("gpus"), list):
        raise DevicePluginError("expected the host's plan (preflight_mps_plan), got %r" % (type(host_plan).__name__,))
    sharing = host_plan.get("sharing")
    if not sharing or not isinstance(sharing.get("settings"), dict):
        raise DevicePluginError("the host's plan has no device plugin planned (preflight_mps_plan.sharing is null: "
                                "gpulab_device_plugin is false, or the plan is of another version)")
    settings = sharing["settings"]
    return host_plan["gpus"], {"mode": settings["mode"], "replicas": settings["replicas"],
                               "per_gpu_replicas": settings["replicas_per_gpu"],
                               "name_pattern": settings["name_pattern"], "owner": host_plan["owner"]}


def plan_node_plans(host_plan, nodes, allow_multi_gpu=False):
    """node_plans() of the Kubernetes nodes of a host, from its plan."""
    gpus, settings = sharing_of(host_plan)
    return node_plans(gpus, nodes, allow_multi_gpu=allow_multi_gpu, **settings)


def plan_manifests(host_plan, **cluster):
    """manifests() of a host's device plugin, from its plan; `cluster`: image, namespace, name, runtime_class,
    mps_root, image_pull_policy, fail_requests_greater_than_one, enable_memory_limit (what the cluster decides)."""
    gpus, settings = sharing_of(host_plan)
    return manifests(gpus, **dict(settings, **cluster))


def plugin_config(gpus, mode=AGGREGATE, replicas=2, per_gpu_replicas=None, owner=OWNER_PLUGIN,
                  name_pattern=DEFAULT_NAME_PATTERN, fail_requests_greater_than_one=True,
                  enable_memory_limit=True):
    """The device plugin's config file (a dict) for a node with these GPUs.

    aggregate: upstream's format. individual: the fork's (`individualGPU`), the only one with per-GPU names.
    Owner host: `sharing.timeSlicing`, the plugin only counts replicas and runs no MPS daemon; the pods reach the
    host daemon, whose per-replica limits the host's plan sets. Owner plugin: `sharing.mps`; in individual mode each
    GPU's `pinnedMemoryLimit` (MiB) is named, since without it the fork's daemon gives every client the GPU's TOTAL
    memory (seen on the H200), and enable_memory_limit only turns that limit off (the fork's own switch).
    """
    node = plan(gpus, mode, replicas, per_gpu_replicas, owner, name_pattern)
    config = {"version": "v1", "flags": {"migStrategy": "none"}}
    replicated = {
        "renameByDefault": False,
        "failRequestsGreaterThanOne": bool(fail_requests_greater_than_one),
        "resources": [{"name": DEFAULT_RESOURCE, "replicas": int(replicas)}],
    }
    if owner == OWNER_HOST:
        # No MPS in the plugin: it only tells the scheduler how many pods share a GPU. The pods
        # reach the host daemon through its pipe directory; its pinned limit bounds their memory.
        config["sharing"] = {"timeSlicing": replicated}
    else:
        config["sharing"] = {"mps": replicated}
        if mode == INDIVIDUAL:
            replicated["enableMemoryLimit"] = bool(enable_memory_limit)
    if mode == INDIVIDUAL:
        gpu_configs = []
        for row in node["gpus"]:
            mps = {"enabled": True, "replicas": row["replicas"]}
            if owner == OWNER_PLUGIN:
                mps["enableMemoryLimit"] = bool(enable_memory_limit)
                if enable_memory_limit:
                    mps["pinnedMemoryLimit"] = row["memory_per_replica_mib"]
            gpu_configs.append({"index": row["index"], "name": row["resource"].split("/", 1)[1], "mps": mps})
        config["individualGPU"] = {"enabled": True, "namePattern": name_pattern, "gpuConfigs": gpu_configs}
    return config


def _yaml_dump(data):
    """A stable YAML text for a ConfigMap value (PyYAML when present, else JSON, which YAML reads)."""
    # Plain types only: Ansible hands filters str/int subclasses that PyYAML's safe dumper refuses.
    data = json.loads(json.dumps(data))
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML comes with ansible-core
        return json.dumps(data, indent=2, sort_keys=True) + "\n"
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=False)


def _labels(name, component):
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/instance": "gpulab-mps",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "gpulab.mps",
    }


def _selector(name, component):
    labels = _labels(name, component)
    return {k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component")}


def _config_manager(name, config_name, oneshot, process_to_signal=""):
    """The upstream config-manager container: copies the config named by the node label into /config."""
    return {
        "name": name,
        "command": ["config-manager"],
        "env": [
            {"name": "ONESHOT", "value": "true" if oneshot else "false"},
            {"name": "KUBECONFIG", "value": ""},
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "NODE_LABEL", "value": LABEL_CONFIG},
            {"name": "CONFIG_FILE_SRCDIR", "value": "/available-configs"},
            {"name": "CONFIG_FILE_DST", "value": "/config/config.yaml"},
            {"name": "DEFAULT_CONFIG", "value": config_name},
            {"name": "FALLBACK_STRATEGIES", "value": "named,single"},
            {"name": "SEND_SIGNAL", "value": "false" if oneshot else "true"},
            {"name": "SIGNAL", "value": "" if oneshot else "1"},
            {"name": "PROCESS_TO_SIGNAL", "value": "" if oneshot else process_to_signal},
        ],
        "volumeMounts": [
            {"name": "available-configs", "mountPath": "/available-configs"},
            {"name": "config", "mountPath": "/config"},
        ],
    }


def manifests(gpus, mode=AGGREGATE, replicas=2, per_gpu_replicas=None, owner=OWNER_PLUGIN,
              name_pattern=DEFAULT_NAME_PATTERN, image=None, namespace=DEFAULT_NAMESPACE,
              name=DEFAULT_NAME, runtime_class=None, mps_root=MPS_ROOT, image_pull_policy="IfNotPresent",
              fail_requests_greater_than_one=True, enable_memory_limit=True, priority_class="system-node-critical",
              tolerations=None):
    """Every object the device plugin needs, in apply order (a list of dicts).

    Namespace, ServiceAccount, ClusterRole, ClusterRoleBinding, ConfigMap, the device-plugin
    DaemonSet and, when the plugin owns MPS, the mps-control-daemon DaemonSet. Follows the upstream
    Helm chart of UPSTREAM_VERSION with the embedded-config layout (config-manager picks the config
    named by the node label nvidia.com/device-plugin.config), its default values (mps.enableHostPID
    true: the MPS daemon runs with hostPID, which the chart sets since v0.18.0 so that the MPS server
    finds its own pid) and migStrategy none (so no NVIDIA_MIG_MONITOR_DEVICES, which the chart adds only
    for a MIG strategy other than none). runtime_class: the RuntimeClass the pods name, none by default (the upstream
    chart's runtimeClassName null: the nodes' default runtime); name one only where the cluster has it (F1 of
    tests/cluster/FINDINGS.md: the API server rejects every pod that names a missing one).
    """
    config = plugin_config(gpus, mode, replicas, per_gpu_replicas, owner, name_pattern,
                           fail_requests_greater_than_one, enable_memory_limit)
    config_name = CONFIG_NAMES[mode]
    if not image:
        if mode == INDIVIDUAL:
            raise DevicePluginError(
                "mode individual needs a device-plugin image that understands individualGPU (the fork of "
                "seed 004): set device_plugin_image. The upstream image %s cannot name resources per GPU: it "
                "drops rename and devices from sharing.timeSlicing and sharing.mps when it loads its config "
                "(DisableResourceNamingInConfig), so every pod would get nvidia.com/gpu" % UPSTREAM_IMAGE)
        image = UPSTREAM_IMAGE
    for what, value in (("namespace", namespace), ("name", name)):
        if not _DNS_LABEL_RE.match(value or "") or len(value) > 40:
            raise DevicePluginError("%s %r must be a DNS label of at most 40 characters" % (what, value))
    config_text = _yaml_dump(config)
    config_hash = hashlib.sha256(config_text.encode("utf-8")).hexdigest()
    sa_name = "%s-service-account" % name
    cm_name = "%s-configs" % name
    if tolerations is None:
        tolerations = [
            {"key": "CriticalAddonsOnly", "operator": "Exists"},
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        ]
    common_labels = _labels(name, "device-plugin")

    objects = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": namespace, "labels": {
             "app.kubernetes.io/managed-by": "gpulab.mps",
             # hostPath volumes and a privileged MPS daemon: the namespace must allow them.
             "pod-security.kubernetes.io/enforce": "privileged"}}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": sa_name, "namespace": namespace, "labels": common_labels}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "%s-role" % name, "labels": common_labels},
         "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "%s-role-binding" % name, "labels": common_labels},
         "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": namespace}],
         "roleRef": {"kind": "ClusterRole", "name": "%s-role" % name, "apiGroup": "rbac.authorization.k8s.io"}},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": cm_name, "namespace": namespace, "labels": common_labels},
         "data": {config_name: config_text}},
    ]

    def pod_common(component):
        spec = {
            "serviceAccountName": sa_name,
            # config-manager signals the main process; the chart's MPS daemon uses hostPID instead (below).
            "shareProcessNamespace": True,
            "priorityClassName": priority_class,
            "tolerations": tolerations,
        }
        if not priority_class:
            del spec["priorityClassName"]
        if runtime_class:
            spec["runtimeClassName"] = runtime_class
        return spec

    def with_image(container):
        container["image"] = image
        container["imagePullPolicy"] = image_pull_policy
        return container

    plugin_env = [
        {"name": "MPS_ROOT", "value": mps_root},
        {"name": "CONFIG_FILE", "value": "/config/config.yaml"},
        {"name": "FAIL_ON_INIT_ERROR", "value": "true"},
        {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"},
        {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "compute,utility"},
    ]
    plugin_mounts = [{"name": "kubelet-device-plugins-dir", "mountPath": "/var/lib/kubelet/device-plugins"},
                     {"name": "cdi-root", "mountPath": "/var/run/cdi"},
                     {"name": "available-configs", "mountPath": "/available-configs"},
                     {"name": "config", "mountPath": "/config"}]
    plugin_volumes = [
        {"name": "kubelet-device-plugins-dir",
         "hostPath": {"path": "/var/lib/kubelet/device-plugins", "type": "Directory"}},
        {"name": "cdi-root", "hostPath": {"path": "/var/run/cdi", "type": "DirectoryOrCreate"}},
        {"name": "available-configs", "configMap": {"name": cm_name}},
        {"name": "config", "emptyDir": {}},
    ]
    if owner == OWNER_PLUGIN:
        # The plugin health-checks the MPS daemon through its pipe and shm.
        plugin_mounts[1:1] = [{"name": "mps-shm", "mountPath": "/dev/shm"},
                              {"name": "mps-root", "mountPath": "/mps"}]
        plugin_volumes[1:1] = [{"name": "mps-root", "hostPath": {"path": mps_root, "type": "DirectoryOrCreate"}},
                               {"name": "mps-shm", "hostPath": {"path": mps_root + "/shm"}}]
    plugin_spec = pod_common("device-plugin")
    plugin_spec.update({
        "initContainers": [with_image(_config_manager("nvidia-device-plugin-init", config_name, True))],
        "containers": [
            with_image(dict(_config_manager("nvidia-device-plugin-sidecar", config_name, False, "nvidia-device-plugin"),
                            securityContext={"capabilities": {"add": ["SYS_ADMIN"]}})),
            with_image({
                "name": "nvidia-device-plugin-ctr",
                "command": ["nvidia-device-plugin"],
                "env": plugin_env,
                "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}},
                "volumeMounts": plugin_mounts,
            }),
        ],
        "volumes": plugin_volumes,
        "nodeSelector": {LABEL_GPU_PRESENT: "true"},
    })
    objects.append({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": namespace, "labels": common_labels},
        "spec": {
            "selector": {"matchLabels": _selector(name, "device-plugin")},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": _labels(name, "device-plugin"),
                             "annotations": {"gpulab.mps/config-sha256": config_hash}},
                "spec": plugin_spec,
            },
        },
    })

    if owner == OWNER_PLUGIN:
        daemon_spec = pod_common("mps-control-daemon")
        # The chart's mps.enableHostPID (true since v0.18.0): the MPS server finds its own pid only in the host's
        # PID namespace. hostPID and shareProcessNamespace cannot both be set.
        del daemon_spec["shareProcessNamespace"]
        daemon_spec["hostPID"] = True
        daemon_spec.update({
            "initContainers": [
                with_image({
                    "name": "mps-control-daemon-mounts",
                    "command": ["mps-control-daemon", "mount-shm"],
                    "securityContext": {"privileged": True},
                    "volumeMounts": [{"name": "mps-root", "mountPath": "/mps", "mountPropagation": "Bidirectional"}],
                }),
                with_image(_config_manager("mps-control-daemon-init", config_name, True)),
            ],
            "containers": [
                with_image(_config_manager("mps-control-daemon-sidecar", config_name, False,
                                           "/usr/bin/mps-control-daemon")),
                with_image({
                    "name": "mps-control-daemon-ctr",
                    "command": ["mps-control-daemon"],
                    "env": [
                        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1",
                                                                         "fieldPath": "spec.nodeName"}}},
                        {"name": "CONFIG_FILE", "value": "/config/config.yaml"},
                        {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"},
                        {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "compute,utility"},
                    ],
                    "securityContext": {"privileged": True},
                    "volumeMounts": [
                        {"name": "mps-shm", "mountPath": "/dev/shm"},
                        {"name": "mps-root", "mountPath": "/mps"},
                        {"name": "available-configs", "mountPath": "/available-configs"},
                        {"name": "config", "mountPath": "/config"},
                    ],
                }),
            ],
            "volumes": [
                {"name": "mps-root", "hostPath": {"path": mps_root, "type": "DirectoryOrCreate"}},
                {"name": "mps-shm", "hostPath": {"path": mps_root + "/shm"}},
                {"name": "available-configs", "configMap": {"name": cm_name}},
                {"name": "config", "emptyDir": {}},
            ],
            # Only on nodes that are MPS-capable AND handed to the plugin: a node whose host
            # daemon serves MPS is labelled mps-owner=host and never gets a second daemon.
            "nodeSelector": {LABEL_MPS_CAPABLE: "true", LABEL_OWNER: OWNER_PLUGIN},
        })
        objects.append({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": mps_daemon_name(name), "namespace": namespace,
                         "labels": _labels(name, "mps-control-daemon")},
            "spec": {
                "selector": {"matchLabels": _selector(name, "mps-control-daemon")},
                "updateStrategy": {"type": "RollingUpdate"},
                "template": {
                    "metadata": {"labels": _labels(name, "mps-control-daemon"),
                                 "annotations": {"gpulab.mps/config-sha256": config_hash}},
                    "spec": daemon_spec,
                },
            },
        })
    return objects


def mps_daemon_name(name=DEFAULT_NAME):
    """Name of the plugin's MPS control daemon DaemonSet."""
    return "%s-mps-control-daemon" % name


def node_labels(mode, owner):
    """The labels a GPU node carries for this mode and owner."""
    _check_mode_owner(mode, owner)
    return {
        LABEL_GPU_PRESENT: "true",
        LABEL_MPS_CAPABLE: "true",
        LABEL_CONFIG: CONFIG_NAMES[mode],
        LABEL_OWNER: owner,
    }


# The node labels the collection added (absent before it labelled the node), comma-separated: the teardown removes
# those, and leaves a label the node already had (nvidia.com/gpu.present from Kind or GPU feature discovery, say).
ANNOTATION_ADDED_LABELS = "gpulab.mps/added-labels"
# What a node labelled before that annotation existed loses at the teardown (the labels of the collection's own making).
LEGACY_REMOVED_LABELS = (LABEL_MPS_CAPABLE, LABEL_CONFIG, LABEL_OWNER)


def node_label_patch(node, labels):
    """The merge patch that gives a Node (as k8s_info returns it) the plan's labels, and records in the annotation
    ANNOTATION_ADDED_LABELS those it did not carry before (kept from earlier runs: a label the collection added stays
    the collection's)."""
    meta = (node or {}).get("metadata") or {}
    have = meta.get("labels") or {}
    recorded = [k for k in ((meta.get("annotations") or {}).get(ANNOTATION_ADDED_LABELS) or "").split(",") if k]
    added = sorted(set(recorded) | set(k for k in labels if k not in have))
    patch = {"metadata": {"labels": dict(labels)}}
    if added:
        patch["metadata"]["annotations"] = {ANNOTATION_ADDED_LABELS: ",".join(added)}
    return patch


def node_label_removal(node):
    """The merge patch that takes the collection's labels off a Node: the ones it added (its annotation), and the MPS
    owner label, which is the collection's alone; then the annotation. A node without the annotation (labelled by an
    older version) loses LEGACY_REMOVED_LABELS. A label the node had before the collection stays."""
    meta = (node or {}).get("metadata") or {}
    annotations = meta.get("annotations") or {}
    if ANNOTATION_ADDED_LABELS in annotations:
        keys = set(k for k in (annotations[ANNOTATION_ADDED_LABELS] or "").split(",") if k) | {LABEL_OWNER}
    else:
        keys = set(LEGACY_REMOVED_LABELS)
    have = meta.get("labels") or {}
    patch = {"metadata": {"labels": dict((k, None) for k in sorted(keys) if k in have)}}
    if ANNOTATION_ADDED_LABELS in annotations:
        patch["metadata"]["annotations"] = {ANNOTATION_ADDED_LABELS: None}
    return patch


def _quantity(value):
    """An integer count from a node's capacity/allocatable string ("8", "8k" is not a GPU count)."""
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def resource_gaps(node, expected):
    """What a Node object (from k8s_info) lacks against `expected` ({resource: count}), as sentences.

    Checks status.capacity and status.allocatable; an empty list means the node advertises
    exactly what was expected. Extra nvidia.com resources that pods can be given (in allocatable) are reported too,
    since a stale resource (a leftover nvidia.com/gpu0 after a switch to aggregate) confuses the scheduler; one left
    in capacity only is not: the kubelet keeps an unregistered plugin's devices there, unschedulable (allocatable 0),
    for 5 minutes (seen on a real v1.36.2 node right after a mode switch).
    """
    name = (node or {}).get("metadata", {}).get("name", "<unnamed node>")
    status = (node or {}).get("status") or {}
    gaps = []
    for field in ("capacity", "allocatable"):
        have = status.get(field) or {}
        for resource, count in sorted(expected.items()):
            got = _quantity(have.get(resource))
            if got is None:
                gaps.append("node %s: %s %s is missing (expected %d)" % (name, field, resource, count))
            elif got != int(count):
                gaps.append("node %s: %s %s is %d, expected %d" % (name, field, resource, got, count))
        for resource in sorted(have if field == "allocatable" else ()):
            if resource.startswith(RESOURCE_DOMAIN + "/") and resource not in expected and _quantity(have[resource]):
                gaps.append("node %s: %s %s=%s is not expected (left over from another mode?)"
                            % (name, field, resource, have[resource]))
    return gaps
