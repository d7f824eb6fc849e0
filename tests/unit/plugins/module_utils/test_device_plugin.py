# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Device plugin config generation: modes, owners, replicas, memory per replica, node checks."""

from __future__ import annotations

import pytest
import yaml

from ansible_collections.gpulab.mps.plugins.module_utils import _device_plugin as dp

# The H100 of the lent GPU machine, as NVML reported it (h100-transcripts/40_nvml.txt):
# total 85520809984 B = 81559 MiB, compute capability (9, 0).
H100 = {"index": 0, "uuid": "GPU-058fcf08-fc4a-49f5-ddd9-6d7fedc642b2", "name": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0", "memory_total_mib": 85520809984 // (1 << 20), "mps_client_cap": 48}
# The H200 of the lent GPU machine (MPS-FACTS, 2026-12-02): 143771 MiB; 20 replicas of 143771 // 20 = 7188 MiB.
H200 = {"index": 0, "uuid": "GPU-3a1b8d4e-0000-0000-0000-000000000000", "name": "NVIDIA H200",
        "compute_capability": "9.0", "memory_total_mib": 143771, "mps_client_cap": 48}
V100 = {"index": 0, "name": "Tesla V100-SXM2-16GB", "compute_capability": [7, 0], "memory_total_mib": 16160}
P100 = {"index": 0, "name": "Tesla P100-PCIE-16GB", "compute_capability": "6.0", "memory_total_mib": 16280}


def gpus(n, model=None):
    return [dict(model or H100, index=i, uuid="GPU-%08d" % i) for i in range(n)]


def test_h100_memory_per_replica_is_total_over_replicas():
    assert H100["memory_total_mib"] == 81559
    plan = dp.plan([H100], replicas=4)
    row = plan["gpus"][0]
    assert row["memory_per_replica_mib"] == 81559 // 4 == 20389
    assert row["active_thread_percentage"] == 25
    assert plan["resources"] == {"nvidia.com/gpu": 4}


@pytest.mark.parametrize("n", [1, 4, 8])
@pytest.mark.parametrize("replicas", [2, 7, 48])
def test_aggregate_counts(n, replicas):
    plan = dp.plan(gpus(n), mode="aggregate", replicas=replicas)
    assert plan["resources"] == {"nvidia.com/gpu": n * replicas}
    assert [r["memory_per_replica_mib"] for r in plan["gpus"]] == [81559 // replicas] * n
    assert plan["config_name"] == "aggregate-gpu-mps"


@pytest.mark.parametrize("n", [1, 4, 8])
def test_individual_names_and_counts(n):
    plan = dp.plan(gpus(n), mode="individual", replicas=3)
    assert plan["resources"] == {"nvidia.com/gpu%d" % i: 3 for i in range(n)}
    assert plan["labels"][dp.LABEL_CONFIG] == "individual-gpu-mps"


def test_individual_per_gpu_replicas():
    plan = dp.plan(gpus(2), mode="individual", replicas=4, per_gpu_replicas={"1": 8})
    assert plan["resources"] == {"nvidia.com/gpu0": 4, "nvidia.com/gpu1": 8}
    assert [r["memory_per_replica_mib"] for r in plan["gpus"]] == [81559 // 4, 81559 // 8]


def test_aggregate_refuses_per_gpu_replicas():
    with pytest.raises(dp.DevicePluginError, match="need mode individual"):
        dp.plan(gpus(2), mode="aggregate", replicas=4, per_gpu_replicas={0: 8})


def test_per_gpu_replicas_for_unknown_gpu():
    with pytest.raises(dp.DevicePluginError, match="name GPU index 5") as raised:
        dp.plan(gpus(2), mode="individual", replicas=4, per_gpu_replicas={5: 8})
    assert "remove them from device_plugin_replicas_per_gpu" in str(raised.value)


def test_per_gpu_replicas_for_a_gpu_the_node_does_not_see():
    """A Kind worker handed GPU 1 sees it as its GPU 0: replicas for index 1 name a GPU it does not have."""
    with pytest.raises(dp.DevicePluginError, match="name GPU index 1, but the node has GPUs 0"):
        dp.node_plans(gpus(2), [{"name": "w1", "gpus": [1]}], mode="individual", replicas=4, per_gpu_replicas={1: 8})


@pytest.mark.parametrize("gpu, replicas, ok", [
    (H100, 48, True), (H100, 49, False), (V100, 48, True), (V100, 49, False),
    (P100, 16, True), (P100, 17, False), (H100, 2, True), (H100, 1, False), (H100, 0, False),
])
def test_client_cap(gpu, replicas, ok):
    if ok:
        assert dp.plan([gpu], replicas=replicas)["resources"]["nvidia.com/gpu"] == replicas
    else:
        with pytest.raises(dp.DevicePluginError) as exc:
            dp.plan([gpu], replicas=replicas)
        message = str(exc.value)
        assert ("at least 2" in message) if replicas < 2 else ("above the MPS client cap" in message)


def test_cap_message_names_the_cap_and_the_gpu():
    with pytest.raises(dp.DevicePluginError) as exc:
        dp.plan([P100], replicas=20)
    assert "cap of 16" in str(exc.value) and "Tesla P100" in str(exc.value)


@pytest.mark.parametrize("value", ["four", 2.5, True, None])
def test_replicas_must_be_whole(value):
    with pytest.raises(dp.DevicePluginError, match="whole number"):
        dp.plan([H100], replicas=value)


def test_replicas_from_string():
    assert dp.plan([H100], replicas="6")["resources"] == {"nvidia.com/gpu": 6}


@pytest.mark.parametrize("cc, cap", [("7.0", 48), ("6.1", 16), ((7, 5), 48), ("9.0", 48), (None, 16)])
def test_cap_from_compute_capability(cc, cap):
    assert dp.client_cap({"compute_capability": cc}) == cap


def test_mps_client_cap_from_gpu_info_wins():
    assert dp.client_cap({"compute_capability": "9.0", "mps_client_cap": 16}) == 16


@pytest.mark.parametrize("bad, message", [
    ([], "no GPUs given"),
    ([{"name": "x"}], "has no index"),
    ([{"index": 0}], "has no memory_total_mib"),
    ([dict(H100), dict(H100)], "appears twice"),
])
def test_bad_gpu_lists(bad, message):
    with pytest.raises(dp.DevicePluginError, match=message):
        dp.plan(bad, replicas=2)


def test_visible_gpus_reindexes():
    plan = dp.plan(gpus(4), mode="individual", replicas=2, visible=[2])
    assert plan["resources"] == {"nvidia.com/gpu0": 2}
    assert plan["gpus"][0]["host_index"] == 2


def test_visible_unknown_gpu():
    with pytest.raises(dp.DevicePluginError, match="handed GPU 9"):
        dp.plan(gpus(2), visible=[9])


def test_individual_with_host_owner_is_refused_naming_the_fix():
    """Seen on the H200 (the device-plugin lane's fork-individual-host scenario): the fork's individualGPU waits for
    its own MPS daemon and registers nothing under owner host, and upstream drops rename/devices: refused."""
    with pytest.raises(dp.DevicePluginError) as raised:
        dp.plan(gpus(1), mode="individual", owner="host", replicas=4)
    assert "cannot work with owner host" in str(raised.value) and "gpulab_mps_owner: plugin" in str(raised.value)


@pytest.mark.parametrize("owner", ["plugin"])
def test_fork_on_a_multi_gpu_node_is_refused_naming_the_allocate_fault(owner):
    with pytest.raises(dp.DevicePluginError) as raised:
        dp.node_plans(gpus(2), [{"name": "gpu-node", "gpus": "all"}], mode="individual", owner=owner, replicas=4)
    message = str(raised.value)
    assert "node gpu-node sees 2 GPUs" in message and "NVIDIA_VISIBLE_DEVICES=0" in message
    assert "device_plugin_fork_allow_multi_gpu_nodes: true" in message and "per_gpu" in message


def test_fork_on_a_multi_gpu_node_with_the_opt_in():
    (node,) = dp.node_plans(gpus(2), [{"name": "n", "gpus": "all"}], mode="individual", replicas=4,
                            allow_multi_gpu=True)
    assert node["plan"]["resources"] == {"nvidia.com/gpu0": 4, "nvidia.com/gpu1": 4}


def test_fork_on_single_gpu_nodes_of_a_multi_gpu_host():
    """Kind's per_gpu layout: one GPU per worker, each worker sees its GPU as gpu0."""
    plans = dp.node_plans(gpus(2), [{"name": "w0", "gpus": [0]}, {"name": "w1", "gpus": [1]}], mode="individual",
                          replicas=4)
    assert [p["plan"]["resources"] for p in plans] == [{"nvidia.com/gpu0": 4}, {"nvidia.com/gpu0": 4}]
    assert [p["plan"]["gpus"][0]["host_index"] for p in plans] == [0, 1]


def test_aggregate_on_a_multi_gpu_node_needs_no_opt_in():
    (node,) = dp.node_plans(gpus(4), [{"name": "n", "gpus": "all"}], replicas=4)
    assert node["plan"]["resources"] == {"nvidia.com/gpu": 16}


@pytest.mark.parametrize("per_gpu", [{0: 1}, {0: "1"}, {1: 1}])
def test_per_gpu_replicas_below_two_are_refused(per_gpu):
    with pytest.raises(dp.DevicePluginError, match="at least 2 replicas"):
        dp.plan(gpus(2), mode="individual", replicas=4, per_gpu_replicas=per_gpu)


@pytest.mark.parametrize("mode, owner", [("sideways", "plugin"), ("aggregate", "both")])
def test_unknown_mode_or_owner(mode, owner):
    with pytest.raises(dp.DevicePluginError, match="must be one of"):
        dp.plan(gpus(1), mode=mode, owner=owner)


def test_aggregate_config_is_the_upstream_format():
    config = dp.plugin_config(gpus(2), mode="aggregate", replicas=10)
    assert config == {
        "version": "v1",
        "flags": {"migStrategy": "none"},
        "sharing": {"mps": {"renameByDefault": False, "failRequestsGreaterThanOne": True,
                            "resources": [{"name": "nvidia.com/gpu", "replicas": 10}]}},
    }


def test_individual_config_is_the_fork_format_with_the_per_replica_limit():
    """Regression: without pinnedMemoryLimit the fork's daemon set the GPU's TOTAL memory (143771M on the H200), and
    an 8000 MiB client ran in a 20-replica share of 7188 MiB."""
    config = dp.plugin_config(gpus(2), mode="individual", replicas=4, per_gpu_replicas={1: 6})
    assert config["sharing"]["mps"]["enableMemoryLimit"] is True
    assert config["individualGPU"] == {
        "enabled": True, "namePattern": "gpu%d",
        "gpuConfigs": [
            {"index": 0, "name": "gpu0", "mps": {"enabled": True, "replicas": 4, "enableMemoryLimit": True,
                                                 "pinnedMemoryLimit": 81559 // 4}},
            {"index": 1, "name": "gpu1", "mps": {"enabled": True, "replicas": 6, "enableMemoryLimit": True,
                                                 "pinnedMemoryLimit": 81559 // 6}},
        ]}


def test_individual_config_on_the_h200():
    config = dp.plugin_config([H200], mode="individual", replicas=20)
    assert config["individualGPU"]["gpuConfigs"][0]["mps"]["pinnedMemoryLimit"] == 7188


def test_individual_config_without_the_memory_limit():
    config = dp.plugin_config(gpus(1), mode="individual", replicas=4, enable_memory_limit=False)
    assert config["individualGPU"]["gpuConfigs"][0]["mps"] == {"enabled": True, "replicas": 4,
                                                               "enableMemoryLimit": False}


def test_host_owner_config_counts_without_mps():
    config = dp.plugin_config(gpus(1), mode="aggregate", replicas=4, owner="host")
    assert "mps" not in config["sharing"]
    assert config["sharing"]["timeSlicing"]["resources"] == [{"name": "nvidia.com/gpu", "replicas": 4}]


def _by_kind(objects):
    out = {}
    for obj in objects:
        out.setdefault(obj["kind"], []).append(obj)
    return out


def test_manifests_plugin_owner_has_the_mps_daemon_on_plugin_nodes_only():
    objs = _by_kind(dp.manifests(gpus(1), replicas=4))
    names = [d["metadata"]["name"] for d in objs["DaemonSet"]]
    assert names == ["nvidia-device-plugin", "nvidia-device-plugin-mps-control-daemon"]
    daemon = objs["DaemonSet"][1]["spec"]["template"]["spec"]
    assert daemon["nodeSelector"] == {"nvidia.com/mps.capable": "true", "gpulab.mps/mps-owner": "plugin"}
    # The two DaemonSets must not select each other's pods.
    selectors = [d["spec"]["selector"]["matchLabels"] for d in objs["DaemonSet"]]
    assert selectors[0] != selectors[1]
    for ds in objs["DaemonSet"]:
        labels = ds["spec"]["template"]["metadata"]["labels"]
        assert all(labels[k] == v for k, v in ds["spec"]["selector"]["matchLabels"].items())


def test_manifests_host_owner_has_no_mps_daemon_and_no_mps_mounts():
    objs = _by_kind(dp.manifests(gpus(1), replicas=4, owner="host"))
    assert [d["metadata"]["name"] for d in objs["DaemonSet"]] == ["nvidia-device-plugin"]
    volumes = [v["name"] for v in objs["DaemonSet"][0]["spec"]["template"]["spec"]["volumes"]]
    assert "mps-root" not in volumes and "mps-shm" not in volumes


def test_configmap_holds_the_config_under_the_label_value():
    objs = _by_kind(dp.manifests(gpus(2), mode="individual", replicas=4, image="registry.local/dp:fork"))
    data = objs["ConfigMap"][0]["data"]
    assert list(data) == ["individual-gpu-mps"]
    assert yaml.safe_load(data["individual-gpu-mps"]) == dp.plugin_config(gpus(2), mode="individual", replicas=4)


def test_config_change_changes_the_pod_template():
    def annotation(replicas):
        ds = _by_kind(dp.manifests(gpus(1), replicas=replicas))["DaemonSet"][0]
        return ds["spec"]["template"]["metadata"]["annotations"]["gpulab.mps/config-sha256"]
    assert annotation(4) == annotation(4)
    assert annotation(4) != annotation(5)


def test_individual_needs_an_image():
    with pytest.raises(dp.DevicePluginError, match="understands individualGPU") as raised:
        dp.manifests(gpus(1), mode="individual", replicas=2, owner="plugin")
    assert "DisableResourceNamingInConfig" in str(raised.value) and "device_plugin_image" in str(raised.value)


def test_the_pinned_upstream_release_is_the_one_run_on_the_gpu():
    assert dp.UPSTREAM_IMAGE == "nvcr.io/nvidia/k8s-device-plugin:v0.20.0"


def test_mps_daemon_runs_with_host_pid_like_the_chart():
    """Regression: the chart sets hostPID on the MPS daemon since v0.18.0; ours had shareProcessNamespace."""
    objs = _by_kind(dp.manifests(gpus(1), replicas=4))
    plugin, daemon = [ds["spec"]["template"]["spec"] for ds in objs["DaemonSet"]]
    assert daemon["hostPID"] is True and "shareProcessNamespace" not in daemon
    assert plugin["shareProcessNamespace"] is True and "hostPID" not in plugin
    env = [e["name"] for c in daemon["containers"] for e in c.get("env", [])]
    assert "NVIDIA_MIG_MONITOR_DEVICES" not in env  # the chart adds it only for a MIG strategy other than none


def test_aggregate_uses_the_pinned_upstream_image():
    objs = _by_kind(dp.manifests(gpus(1), replicas=2))
    images = {c["image"] for ds in objs["DaemonSet"] for key in ("containers", "initContainers")
              for c in ds["spec"]["template"]["spec"].get(key, [])}
    assert images == {dp.UPSTREAM_IMAGE}


def test_runtime_class_optional():
    ds = _by_kind(dp.manifests(gpus(1), replicas=2, runtime_class=""))["DaemonSet"][0]
    assert "runtimeClassName" not in ds["spec"]["template"]["spec"]


@pytest.mark.parametrize("namespace", ["Bad_NS", "", "x" * 41])
def test_bad_namespace(namespace):
    with pytest.raises(dp.DevicePluginError, match="DNS label"):
        dp.manifests(gpus(1), replicas=2, namespace=namespace)


NODE = {"metadata": {"name": "gpulab-worker"},
        "status": {"capacity": {"cpu": "8", "nvidia.com/gpu": "4"}, "allocatable": {"cpu": "8", "nvidia.com/gpu": "4"}}}


def test_gaps_none_when_all_there():
    assert dp.resource_gaps(NODE, {"nvidia.com/gpu": 4}) == []


def test_gaps_wrong_count_and_missing():
    gaps = dp.resource_gaps(NODE, {"nvidia.com/gpu": 8, "nvidia.com/gpu1": 2})
    assert "node gpulab-worker: capacity nvidia.com/gpu is 4, expected 8" in gaps
    assert "node gpulab-worker: allocatable nvidia.com/gpu1 is missing (expected 2)" in gaps
    assert len(gaps) == 4


def test_gaps_report_leftover_resources():
    gaps = dp.resource_gaps(NODE, {"nvidia.com/gpu0": 4})
    assert any("nvidia.com/gpu=4 is not expected" in g for g in gaps)


def test_gaps_zero_leftover_is_fine():
    node = {"metadata": {"name": "n"}, "status": {"capacity": {"nvidia.com/gpu": "0", "nvidia.com/gpu0": "2"},
                                                  "allocatable": {"nvidia.com/gpu": "0", "nvidia.com/gpu0": "2"}}}
    assert dp.resource_gaps(node, {"nvidia.com/gpu0": 2}) == []


def test_gaps_ignore_what_the_kubelet_keeps_in_capacity_of_a_plugin_that_went():
    """Regression (cluster lane, 2026-12-04): right after a switch from aggregate to individual mode, the real node
    (Kubernetes v1.36.2) still had the old resource in capacity, unschedulable: capacity nvidia.com/gpu 80, allocatable
    0 (the kubelet keeps an unregistered plugin's devices for 5 minutes). The role failed the fresh deploy with
    'capacity nvidia.com/gpu=80 is not expected (left over from another mode?)'; the scheduler reads allocatable."""
    node = {"metadata": {"name": "lane-node"}, "status": {
        "capacity": {"cpu": "2", "nvidia.com/gpu": "80", "nvidia.com/gpu0": "20", "nvidia.com/gpu1": "20",
                     "nvidia.com/gpu2": "20", "nvidia.com/gpu3": "20", "pods": "110"},
        "allocatable": {"cpu": "2", "nvidia.com/gpu": "0", "nvidia.com/gpu0": "20", "nvidia.com/gpu1": "20",
                        "nvidia.com/gpu2": "20", "nvidia.com/gpu3": "20", "pods": "110"}}}
    assert dp.resource_gaps(node, dict(("nvidia.com/gpu%d" % i, 20) for i in range(4))) == []


def test_gaps_of_a_node_without_status():
    assert dp.resource_gaps({"metadata": {"name": "n"}}, {"nvidia.com/gpu": 2}) == [
        "node n: capacity nvidia.com/gpu is missing (expected 2)",
        "node n: allocatable nvidia.com/gpu is missing (expected 2)"]


# --- the node labels: what the deploy adds is what the teardown removes (the cluster lane, 2026-12-04) ---------------

def _node(labels=None, annotations=None):
    return {"metadata": {"name": "lane-node", "labels": dict(labels or {}), "annotations": dict(annotations or {})}}


def _apply(node, patch):
    """A merge patch on a node's labels and annotations, as the API server applies it (null removes a key)."""
    out = {"metadata": {"name": node["metadata"]["name"]}}
    for field in ("labels", "annotations"):
        merged = dict(node["metadata"].get(field) or {})
        for key, value in (patch["metadata"].get(field) or {}).items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        out["metadata"][field] = merged
    return out


def test_the_teardown_removes_every_label_the_deploy_added():
    """Regression: on the cluster lane's real node, nvidia.com/gpu.present stayed after playbooks/teardown.yml (the
    deploy set it, the removal kept it because Kind sets it on Kind's workers)."""
    before = _node({"kubernetes.io/hostname": "lane-node"})
    labels = dp.node_labels("aggregate", "host")
    deployed = _apply(before, dp.node_label_patch(before, labels))
    assert all(deployed["metadata"]["labels"][k] == v for k, v in labels.items())
    again = _apply(deployed, dp.node_label_patch(deployed, labels))      # a second run forgets nothing
    after = _apply(again, dp.node_label_removal(again))
    assert after == before


def test_a_label_the_node_had_before_stays():
    before = _node({"nvidia.com/gpu.present": "true", "kubernetes.io/hostname": "gpu-17"})
    deployed = _apply(before, dp.node_label_patch(before, dp.node_labels("aggregate", "plugin")))
    after = _apply(deployed, dp.node_label_removal(deployed))
    assert after == before


def test_a_node_labelled_before_the_annotation_loses_what_the_collection_always_removed():
    node = _node(dp.node_labels("individual", "plugin"))
    after = _apply(node, dp.node_label_removal(node))
    assert after["metadata"]["labels"] == {"nvidia.com/gpu.present": "true"}
