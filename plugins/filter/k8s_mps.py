# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Filters that render the Kubernetes side of gpulab.mps: the Kind config, the device plugin, the pods, a QoS class's env.

The roles kind_cluster, device_plugin and mps_dialtone (pod) build every object through these
filters, and tests/render validates the very same output offline, so what is applied is what
was validated. Documentation of each filter: plugins/filter/<name>.yml.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.gpulab.mps.plugins.module_utils import _device_plugin as dp
from ansible_collections.gpulab.mps.plugins.module_utils import _pods as dt
from ansible_collections.gpulab.mps.plugins.module_utils import _kind as kind
from ansible_collections.gpulab.mps.plugins.module_utils import _qos as qos


def _call(func, *args, **kwargs):
    try:
        return func(*args, **kwargs)
    except (dp.DevicePluginError, kind.KindConfigError, dt.DialtoneError, ValueError) as exc:
        raise AnsibleFilterError("%s: %s" % (func.__name__, exc))


def kind_config(gpus, **kwargs):
    """The Kind config (a dict) for a host with these GPUs."""
    return _call(kind.kind_config, gpus, **kwargs)


def kind_gpu_nodes(config):
    """The GPU workers of a Kind config: [{name, gpus: "all" | [indices]}]."""
    return _call(kind.gpu_nodes, config)


def runtime_class(name, handler=None):
    """The RuntimeClass (a dict) for the NVIDIA runtime handler."""
    return _call(kind.runtime_class, name, handler)


def device_plugin_plan(gpus, **kwargs):
    """Per node: resources, replicas, memory per replica, labels."""
    return _call(dp.plan, gpus, **kwargs)


def device_plugin_node_plans(source, nodes, **kwargs):
    """The plan of each node of a GPU host: [{name, plan}]. source: the host's plan (preflight_mps_plan), whose sharing
    section says what the plugin advertises; or, for tests and other uses, a gpus list with the settings as kwargs."""
    if isinstance(source, dict):
        return _call(dp.plan_node_plans, source, nodes, **kwargs)
    return _call(dp.node_plans, source, nodes, **kwargs)


def device_plugin_manifests(source, **kwargs):
    """Every object of the device plugin, in apply order; source as for device_plugin_node_plans."""
    if isinstance(source, dict):
        return _call(dp.plan_manifests, source, **kwargs)
    return _call(dp.manifests, source, **kwargs)


def node_resource_gaps(node, expected):
    """What a Node object lacks against the expected resources, as sentences (empty: all there)."""
    return _call(dp.resource_gaps, node, expected)


def node_label_patch(node, labels):
    """The merge patch that labels a Node, recording the labels the collection added (for the teardown)."""
    return _call(dp.node_label_patch, node, labels)


def node_label_removal(node):
    """The merge patch that takes the labels the collection added off a Node."""
    return _call(dp.node_label_removal, node)


def dialtone_pod(name="mps-dialtone", **kwargs):
    """The dial-tone pod (a dict)."""
    return _call(dt.dialtone_pod, name, **kwargs)


def workload_pod(files, command, **kwargs):
    """The workload pod and the ConfigMap with its files, in apply order."""
    return _call(dt.workload_pod, files, command, **kwargs)


def mps_qos_env(plan, name):
    """A QoS class's environment from the host's plan, as a container's env list."""
    return _call(qos.pod_env, plan, name)


def dialtone_diagnosis(result, **kwargs):
    """The meaning of a kubernetes.core.k8s_exec result of the dial-tone: {ok, state, message}."""
    if not isinstance(result, dict):
        raise AnsibleFilterError("dialtone_diagnosis: expects the registered result of kubernetes.core.k8s_exec")
    rc = result.get("rc", result.get("return_code"))
    if rc is None and result.get("failed"):
        rc = 1
    return _call(dt.diagnose, rc, result.get("stdout", ""), (result.get("stderr") or "") + (
        "\n" + result["msg"] if result.get("failed") and result.get("msg") else ""), **kwargs)


class FilterModule(object):
    """gpulab.mps Kubernetes filters."""

    def filters(self):
        return {
            "kind_config": kind_config,
            "kind_gpu_nodes": kind_gpu_nodes,
            "runtime_class": runtime_class,
            "device_plugin_plan": device_plugin_plan,
            "device_plugin_node_plans": device_plugin_node_plans,
            "device_plugin_manifests": device_plugin_manifests,
            "node_resource_gaps": node_resource_gaps,
            "node_label_patch": node_label_patch,
            "node_label_removal": node_label_removal,
            "dialtone_pod": dialtone_pod,
            "workload_pod": workload_pod,
            "dialtone_diagnosis": dialtone_diagnosis,
            "mps_qos_env": mps_qos_env,
        }
