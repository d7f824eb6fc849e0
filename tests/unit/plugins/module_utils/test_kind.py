# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kind config generation (the nvkind GPU mounts plus the MPS pipe) and the kind CLI parsers."""

from __future__ import annotations

import pytest

from ansible_collections.gpulab.mps.plugins.module_utils import _kind as kind

PIPE = {"hostPath": "/tmp/nvidia-mps", "containerPath": "/tmp/nvidia-mps"}
ALL = {"hostPath": "/dev/null", "containerPath": "/var/run/nvidia-container-devices/all"}


def test_single_layout_is_the_seed_recipe():
    config = kind.kind_config(1, name="gpulab", node_image="kindest/node:v1.33.1")
    assert config == {
        "kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4", "name": "gpulab",
        "nodes": [
            {"role": "control-plane", "image": "kindest/node:v1.33.1", "extraMounts": [PIPE]},
            {"role": "worker", "image": "kindest/node:v1.33.1", "labels": {"nvidia.com/gpu.present": "true"},
             "extraMounts": [PIPE, ALL]},
        ]}


@pytest.mark.parametrize("n", [1, 4, 8])
def test_per_gpu_layout(n):
    config = kind.kind_config(n, layout="per_gpu")
    workers = [node for node in config["nodes"] if node["role"] == "worker"]
    assert len(workers) == n
    for i, worker in enumerate(workers):
        assert worker["extraMounts"] == [PIPE, {"hostPath": "/dev/null",
                                                "containerPath": "/var/run/nvidia-container-devices/%d" % i}]
    assert kind.gpu_nodes(config) == [{"name": "gpulab-worker%s" % ("" if i == 0 else i + 1), "gpus": [i]}
                                      for i in range(n)]


def test_cdi_mounts():
    config = kind.kind_config([0, 3], layout="per_gpu", device_mount_style="cdi")
    paths = [n["extraMounts"][1]["containerPath"] for n in config["nodes"][1:]]
    assert paths == ["/var/run/nvidia-container-devices/cdi/runtime.nvidia.com/gpu/0",
                     "/var/run/nvidia-container-devices/cdi/runtime.nvidia.com/gpu/3"]


def test_every_node_gets_the_pipe_even_cpu_workers():
    config = kind.kind_config(2, cpu_workers=2, pipe_directory="/run/mps/")
    assert all({"hostPath": "/run/mps", "containerPath": "/run/mps"} in n["extraMounts"] for n in config["nodes"])
    assert kind.gpu_nodes(config) == [{"name": "gpulab-worker", "gpus": "all"}]


def test_no_pipe_mount():
    config = kind.kind_config(1, pipe_mount=False)
    assert "extraMounts" not in config["nodes"][0]
    assert config["nodes"][1]["extraMounts"] == [ALL]


def test_gpu_info_list_accepted():
    config = kind.kind_config([{"index": 1}, {"index": 0}], layout="per_gpu")
    assert kind.gpu_nodes(config)[1]["gpus"] == [1]


def test_no_gpus_gives_a_cpu_only_cluster():
    config = kind.kind_config(0)
    assert [n["role"] for n in config["nodes"]] == ["control-plane"]


@pytest.mark.parametrize("kwargs, message", [
    ({"gpus": 1, "name": "Gpu_Lab"}, "lower-case"),
    ({"gpus": 1, "pipe_directory": "relative/dir"}, "absolute path"),
    ({"gpus": 1, "layout": "spread"}, "layout must be one of"),
    ({"gpus": 1, "device_mount_style": "env"}, "device mount style"),
    ({"gpus": -1}, "must not be negative"),
    ({"gpus": [0, 0]}, "repeat"),
    ({"gpus": 1, "extra_mounts": [{"hostPath": "/x"}]}, "needs hostPath and containerPath"),
])
def test_bad_input(kwargs, message):
    with pytest.raises(kind.KindConfigError, match=message):
        kind.kind_config(**kwargs)


def test_node_names():
    assert kind.node_names("lab", 3) == ["lab-control-plane", "lab-worker", "lab-worker2", "lab-worker3"]


@pytest.mark.parametrize("stdout, names", [
    ("", []),
    ("No kind clusters found.\n", []),
    ("gpulab\nkind\n", ["gpulab", "kind"]),
    ("enabling experimental podman provider\ngpulab\n", ["gpulab"]),
])
def test_parse_clusters(stdout, names):
    assert kind.parse_clusters(stdout) == names


def test_parse_nodes_sorted():
    assert kind.parse_nodes("gpulab-worker\ngpulab-control-plane\n") == ["gpulab-control-plane", "gpulab-worker"]


def test_runtime_class():
    assert kind.runtime_class("nvidia") == {
        "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
        "metadata": {"name": "nvidia", "labels": {"app.kubernetes.io/managed-by": "gpulab.mps"}}, "handler": "nvidia"}
    with pytest.raises(kind.KindConfigError, match="not a DNS label"):
        kind.runtime_class("NVIDIA")
