# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The k8s_mps filters: registered names, errors as AnsibleFilterError, the k8s_exec result shape."""

from __future__ import annotations

import pytest

from ansible.errors import AnsibleFilterError

from ansible_collections.gpulab.mps.plugins.filter import k8s_mps

FILTERS = k8s_mps.FilterModule().filters()
H100 = {"index": 0, "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "memory_total_mib": 81559}


def test_registered_names():
    assert sorted(FILTERS) == ["device_plugin_manifests", "device_plugin_node_plans", "device_plugin_plan", "dialtone_diagnosis", "dialtone_pod",
                               "kind_config", "kind_gpu_nodes", "mps_qos_env", "node_label_patch", "node_label_removal",
                               "node_resource_gaps", "runtime_class", "workload_pod"]


def test_errors_become_filter_errors():
    with pytest.raises(AnsibleFilterError, match="above the MPS client cap"):
        FILTERS["device_plugin_plan"]([H100], replicas=64)
    with pytest.raises(AnsibleFilterError, match="layout must be one of"):
        FILTERS["kind_config"](1, layout="nope")


def test_plan_through_the_filter():
    assert FILTERS["device_plugin_plan"]([H100], mode="individual", replicas=4)["resources"] == {"nvidia.com/gpu0": 4}


@pytest.mark.parametrize("result, state", [
    ({"rc": 0, "stdout": "Server not found\n", "stderr": ""}, "answered"),
    ({"return_code": 1, "stdout": "Cannot find MPS control daemon process\n"}, "no_daemon"),
    ({"failed": True, "msg": "Failed to execute on pod x due to : Transport endpoint is not connected"}, "daemon_died"),
])
def test_diagnosis_of_k8s_exec_results(result, state):
    assert FILTERS["dialtone_diagnosis"](result)["state"] == state


def test_diagnosis_needs_a_dict():
    with pytest.raises(AnsibleFilterError, match="registered result"):
        FILTERS["dialtone_diagnosis"]("Server not found")


def test_node_plans():
    gpus = [dict(H100, index=i) for i in range(2)]
    plans = FILTERS["device_plugin_node_plans"](gpus, [{"name": "w1", "gpus": [0]}, {"name": "w2", "gpus": [1]}],
                                                mode="individual", replicas=2)
    assert [(p["name"], p["plan"]["resources"]) for p in plans] == [
        ("w1", {"nvidia.com/gpu0": 2}), ("w2", {"nvidia.com/gpu0": 2})]
    assert plans[1]["plan"]["gpus"][0]["host_index"] == 1
    with pytest.raises(AnsibleFilterError, match="no nodes given"):
        FILTERS["device_plugin_node_plans"](gpus, [])


def test_a_qos_class_env_through_the_filter():
    from ansible_collections.gpulab.mps.plugins.module_utils import _qos
    plan = {"qos": _qos.qos_plan(_qos.DEFAULT_CLASSES, None, [dict(H100, memory_total_bytes=85520809984)])[0]}
    env = FILTERS["mps_qos_env"](plan, "batch")
    assert env == [{"name": "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "value": "12"},
                   {"name": "CUDA_MPS_CLIENT_PRIORITY", "value": "1"}]
    pod = FILTERS["dialtone_pod"]("qos-dialtone", env=env)
    assert pod["spec"]["containers"][0]["env"][-2:] == env
    with pytest.raises(AnsibleFilterError, match="pod_env: no QoS class 'gold' in this host's plan: it has batch, latency"):
        FILTERS["mps_qos_env"](plan, "gold")
