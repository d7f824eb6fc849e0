# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""JSON schemas of the two formats that kubernetes-validate does not know.

KIND_V1ALPHA4: the fields of kind's `kind.x-k8s.io/v1alpha4` Cluster, transcribed from
kubernetes-sigs/kind pkg/apis/config/v1alpha4/types.go (Cluster, Node, Networking, Mount,
PortMapping, PatchJSON6902). Unknown fields are errors, as they are for `kind create cluster`
(it decodes strictly). The `gpus` node field of some unreleased kind branches is left out on
purpose: the collection hands GPUs to nodes the nvkind way (extraMounts), which every kind
release understands.

DEVICE_PLUGIN_V1: the NVIDIA k8s-device-plugin config file, `version: v1`, transcribed from
NVIDIA/k8s-device-plugin api/config/v1 (config.go, flags.go, sharing.go, replicas.go) for the
parts the collection writes. DEVICE_PLUGIN_FORK adds what the fork of seed 004 reads:
`individualGPU` and `sharing.mps.enableMemoryLimit`.
"""

from __future__ import annotations

import copy

_MOUNT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "containerPath": {"type": "string"},
        "hostPath": {"type": "string"},
        "readOnly": {"type": "boolean"},
        "selinuxRelabel": {"type": "boolean"},
        "propagation": {"enum": ["None", "HostToContainer", "Bidirectional"]},
    },
}
_PORT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "containerPort": {"type": "integer"},
        "hostPort": {"type": "integer"},
        "listenAddress": {"type": "string"},
        "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
    },
}
_PATCH_6902 = {
    "type": "object",
    "additionalProperties": False,
    "required": ["group", "version", "kind", "patch"],
    "properties": {k: {"type": "string"} for k in ("group", "version", "kind", "patch")},
}
KIND_V1ALPHA4 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["kind", "apiVersion"],
    "properties": {
        "kind": {"const": "Cluster"},
        "apiVersion": {"const": "kind.x-k8s.io/v1alpha4"},
        "name": {"type": "string"},
        "nodes": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "role": {"enum": ["control-plane", "worker"]},
                    "image": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "extraMounts": {"type": "array", "items": _MOUNT},
                    "extraPortMappings": {"type": "array", "items": _PORT},
                    "kubeadmConfigPatches": {"type": "array", "items": {"type": "string"}},
                    "kubeadmConfigPatchesJSON6902": {"type": "array", "items": _PATCH_6902},
                },
            },
        },
        "networking": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "ipFamily": {"enum": ["ipv4", "ipv6", "dual"]},
                "apiServerPort": {"type": "integer"},
                "apiServerAddress": {"type": "string"},
                "podSubnet": {"type": "string"},
                "serviceSubnet": {"type": "string"},
                "disableDefaultCNI": {"type": "boolean"},
                "kubeProxyMode": {"enum": ["iptables", "ipvs", "nftables", "none"]},
                "dnsSearch": {"type": "array", "items": {"type": "string"}},
            },
        },
        "featureGates": {"type": "object", "additionalProperties": {"type": "boolean"}},
        "runtimeConfig": {"type": "object", "additionalProperties": {"type": "string"}},
        "kubeadmConfigPatches": {"type": "array", "items": {"type": "string"}},
        "kubeadmConfigPatchesJSON6902": {"type": "array", "items": _PATCH_6902},
        "containerdConfigPatches": {"type": "array", "items": {"type": "string"}},
        "containerdConfigPatchesJSON6902": {"type": "array", "items": {"type": "string"}},
    },
}

_REPLICA_RESOURCE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "replicas"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9.-]+/[a-z0-9-]+$"},
        "rename": {"type": "string"},
        "devices": {},
        "replicas": {"type": "integer", "minimum": 1},
    },
}
_REPLICATED = {
    "type": "object",
    "additionalProperties": False,
    "required": ["resources"],
    "properties": {
        "renameByDefault": {"type": "boolean"},
        "failRequestsGreaterThanOne": {"type": "boolean"},
        "resources": {"type": "array", "minItems": 1, "items": _REPLICA_RESOURCE},
    },
}
DEVICE_PLUGIN_V1 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["version"],
    "properties": {
        "version": {"const": "v1"},
        "flags": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "migStrategy": {"enum": ["none", "single", "mixed"]},
                "failOnInitError": {"type": "boolean"},
                "restartOnDeviceUnhealthy": {"type": "boolean"},
                "nvidiaDriverRoot": {"type": "string"},
                "gdsEnabled": {"type": "boolean"},
                "mofedEnabled": {"type": "boolean"},
                "plugin": {"type": "object"},
                "gfd": {"type": "object"},
            },
        },
        "resources": {"type": "object"},
        "sharing": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"timeSlicing": _REPLICATED, "mps": _REPLICATED},
        },
        "imex": {"type": "object"},
    },
}

DEVICE_PLUGIN_FORK = copy.deepcopy(DEVICE_PLUGIN_V1)
DEVICE_PLUGIN_FORK["properties"]["sharing"]["properties"]["mps"]["properties"]["enableMemoryLimit"] = {"type": "boolean"}
DEVICE_PLUGIN_FORK["properties"]["individualGPU"] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["enabled", "gpuConfigs"],
    "properties": {
        "enabled": {"type": "boolean"},
        "namePattern": {"type": "string", "pattern": "%d"},
        "gpuConfigs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["index", "name", "mps"],
                "properties": {
                    "index": {"type": "integer", "minimum": 0},
                    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                    "mps": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["enabled", "replicas"],
                        "properties": {
                            "enabled": {"type": "boolean"},
                            "replicas": {"type": "integer", "minimum": 2, "maximum": 48},
                            "enableMemoryLimit": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}
