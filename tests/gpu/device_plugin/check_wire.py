# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kubelet stand-in against the real Go side of the device plugin API, on a CPU machine.

    tests/gpu/device_plugin/build.sh --loaders-only UPSTREAM_GIT FORK_GIT   # builds .cache/dp-loaders/upstream/*
    .venv/bin/python tests/gpu/device_plugin/check_wire.py [.dp-bin/deviceplugin-v1beta1.proto] [wireplugin binary]

gpulab-wireplugin (wireplugin/main.go) is compiled against the vendored v1beta1 Go package and gRPC of
k8s-device-plugin v0.20.0, and registers with the same dial as nvidia-device-plugin. This proves, before any GPU
time is spent, that the stand-in (messages built at run time from api.proto, grpcio) and the Go plugin understand
each other: registration, options, ListAndWatch, Allocate with envs, mounts, devices and annotations, and a refused
request. Prints one JSON object; exit 0 when every check holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)

import kubelet_standin as ks  # noqa: E402


def main(argv):
    proto = argv[1] if len(argv) > 1 else os.path.join(ROOT, ".dp-bin", "deviceplugin-v1beta1.proto")
    binary = argv[2] if len(argv) > 2 else os.path.join(ROOT, ".cache", "dp-loaders", "upstream", "gpulab-wireplugin")
    api = ks.Api.from_file(proto)
    checks = {}
    with tempfile.TemporaryDirectory() as sockets:
        kubelet = ks.KubeletStandin(api, sockets).start()
        plugin = subprocess.Popen([binary, "-dir", sockets, "-resource", "nvidia.com/gpu", "-n", "20"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            registration = kubelet.wait_for("nvidia.com/gpu", 20)
            checks["registered"] = registration is not None and registration["version"] == "v1beta1" \
                and registration["endpoint"] == "gpulab-wire.sock"
            client = kubelet.plugin(registration)
            options = client.options()
            checks["options"] = options == {"get_preferred_allocation_available": True}
            devices, updates = client.list_and_watch(timeout=10)
            checks["devices"] = [d["ID"] for d in devices] == ["GPU-fake::%d" % i for i in range(20)] \
                and all(d["health"] == "Healthy" for d in devices) \
                and devices[0].get("topology") == {"nodes": [{}]}  # NUMA node 0: proto3 leaves out the zero
            responses, error = client.allocate([["GPU-fake::3"]])
            checks["allocate"] = error is None and responses == [{
                "envs": {"CUDA_MPS_PIPE_DIRECTORY": "/mps/nvidia.com/gpu/pipe", "NVIDIA_VISIBLE_DEVICES": "GPU-fake",
                         "GPULAB_DEVICE": "GPU-fake::3"},
                "mounts": [{"container_path": "/mps/nvidia.com/gpu/pipe",
                            "host_path": "/run/nvidia/mps/nvidia.com/gpu/pipe"},
                           {"container_path": "/dev/shm", "host_path": "/run/nvidia/mps/shm", "read_only": True}],
                "devices": [{"container_path": "/dev/nvidia0", "host_path": "/dev/nvidia0", "permissions": "rw"}],
                "annotations": {"gpulab.mps/device": "GPU-fake::3"}}]
            refused, refusal = client.allocate([["GPU-fake::1", "GPU-fake::2"]])
            checks["refused"] = refused is None and "maximum request size for shared resources is 1" in refusal
            client.close()
            result = {"checks": checks, "registration": registration, "options": options, "devices": len(devices),
                      "updates": updates, "allocate": responses, "refusal": refusal}
        finally:
            plugin.terminate()
            out, err = plugin.communicate(timeout=10)
            kubelet.stop()
        result["plugin_output"] = (out + err).strip().splitlines()
    result["ok"] = all(checks.values()) and len(checks) == 5
    print(json.dumps(result, indent=1, sort_keys=True))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
