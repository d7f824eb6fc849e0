# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The JSON schema of kind's config, a format that kubernetes-validate does not know.

(The device plugin's config files are checked against what its real loaders say, recorded in
fixtures/device_plugin_loaders.json, not against a schema: see fixtures/README.md.)

KIND_V1ALPHA4: the fields of kind's `kind.x-k8s.io/v1alpha4` Cluster, transcribed from
kubernetes-sigs/kind pkg/apis/config/v1alpha4/types.go (Cluster, Node, Networking, Mount,
PortMapping, PatchJSON6902). Unknown fields are errors, as they are for `kind create cluster`
(it decodes strictly). The `gpus` node field of some unreleased kind branches is left out on
purpose: the collection hands GPUs to nodes the nvkind way (extraMounts), which every kind
release understands.
"""

from __future__ import annotations

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
