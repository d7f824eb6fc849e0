# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The device plugin config files whose fate under the REAL loaders is recorded in fixtures/device_plugin_loaders.json.

RENDERED: every config the collection renders in tests/render (both modes, both owners, 1/4/8 GPUs, the replica
counts the tests use), made by the same code. BROKEN: configs with one fault each (a misspelt key, too few
replicas, ...), to show what each loader does with it. The fixture holds the real loaders' verdicts on all of them
(fixtures/README.md: when, from which commits); test_render.py checks that the fixture is current and reads the
verdicts.
"""

from __future__ import annotations

import copy
import json

from ansible_collections.gpulab.mps.plugins.module_utils import _device_plugin as dp

H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "memory_total_mib": 81559, "mps_client_cap": 48}
H200 = {"name": "NVIDIA H200", "compute_capability": "9.0", "memory_total_mib": 143771, "mps_client_cap": 48}
GPU_COUNTS = [1, 4, 8]
REPLICAS = [2, 4, 20, 48]
# Individual mode with owner host is refused (the fork registers nothing without its own daemon, seen on the H200).
MODES_OWNERS = [("aggregate", "plugin"), ("aggregate", "host"), ("individual", "plugin")]
# Which loader reads which mode: aggregate is upstream's format, individual the fork's.
LOADER_OF_MODE = {"aggregate": "upstream", "individual": "fork"}


def gpus(n, model=None):
    return [dict(model or H100, index=i) for i in range(n)]


def key(config):
    """The identity of a config: its canonical JSON."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def rendered():
    """{name: (mode, owner, config)} for every config the render tests produce."""
    out = {}
    for mode, owner in MODES_OWNERS:
        for n in GPU_COUNTS:
            for replicas in REPLICAS:
                name = "%s-%s-%dxH100-r%d" % (mode, owner, n, replicas)
                out[name] = (mode, owner, dp.plugin_config(gpus(n), mode=mode, owner=owner, replicas=replicas))
        out["%s-%s-1xH200-r20" % (mode, owner)] = (mode, owner, dp.plugin_config(
            gpus(1, H200), mode=mode, owner=owner, replicas=20))
    out["individual-plugin-2xH100-r4-per-gpu"] = ("individual", "plugin", dp.plugin_config(
        gpus(2), mode="individual", owner="plugin", replicas=4, per_gpu_replicas={1: 8}))
    out["individual-plugin-1xH100-r4-no-memory-limit"] = ("individual", "plugin", dp.plugin_config(
        gpus(1), mode="individual", owner="plugin", replicas=4, enable_memory_limit=False))
    out["aggregate-plugin-1xH100-r4-requests-greater-than-one"] = ("aggregate", "plugin", dp.plugin_config(
        gpus(1), mode="aggregate", owner="plugin", replicas=4, fail_requests_greater_than_one=False))
    return out


def _renamed(config, old, new):
    """The config with one key renamed wherever it occurs (a misspelling)."""
    if isinstance(config, dict):
        return dict((new if k == old else k, _renamed(v, old, new)) for k, v in config.items())
    if isinstance(config, list):
        return [_renamed(v, old, new) for v in config]
    return config


def broken():
    """{name: (what it shows, config)}: one fault each."""
    aggregate = dp.plugin_config(gpus(1), mode="aggregate", owner="plugin", replicas=4)
    host = dp.plugin_config(gpus(1), mode="aggregate", owner="host", replicas=4)
    fork = dp.plugin_config(gpus(1), mode="individual", owner="plugin", replicas=4)
    one_replica = copy.deepcopy(aggregate)
    one_replica["sharing"]["mps"]["resources"][0]["replicas"] = 1
    no_replicas = copy.deepcopy(aggregate)
    del no_replicas["sharing"]["mps"]["resources"][0]["replicas"]
    fork_one_replica = copy.deepcopy(fork)
    fork_one_replica["individualGPU"]["gpuConfigs"][0]["mps"]["replicas"] = 1
    per_gpu_by_rename = copy.deepcopy(host)
    per_gpu_by_rename["sharing"]["timeSlicing"]["resources"] = [
        {"name": "nvidia.com/gpu", "rename": "nvidia.com/gpu0", "devices": [0], "replicas": 4}]
    per_gpu_by_rename_mps = copy.deepcopy(aggregate)
    per_gpu_by_rename_mps["sharing"]["mps"]["resources"] = [
        {"name": "nvidia.com/gpu", "rename": "nvidia.com/gpu0", "devices": [0], "replicas": 4}]
    mixed = copy.deepcopy(aggregate)
    mixed["flags"]["migStrategy"] = "mixed"
    return {
        "misspelt-sharing": ("a misspelt top-level key", _renamed(aggregate, "sharing", "sharng")),
        "misspelt-failRequestsGreaterThanOne": (
            "a misspelt key inside sharing.mps", _renamed(aggregate, "failRequestsGreaterThanOne",
                                                          "failRequestGreaterThanOne")),
        "misspelt-pinnedMemoryLimit": ("a misspelt key inside the fork's gpuConfigs",
                                       _renamed(fork, "pinnedMemoryLimit", "pinnedMemoryLimt")),
        "replicas-1": ("one replica", one_replica),
        "replicas-missing": ("no replicas", no_replicas),
        "fork-gpu-replicas-1": ("one replica for a GPU of the fork", fork_one_replica),
        "timeSlicing-rename-devices": ("per-GPU names with upstream's timeSlicing rename/devices", per_gpu_by_rename),
        "mps-rename-devices": ("per-GPU names with upstream's mps rename/devices", per_gpu_by_rename_mps),
        "migStrategy-mixed-with-mps": ("MIG strategy mixed with MPS", mixed),
    }
