# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an administrator checks on a host that kind_cluster prepared for a Kind lab with GPUs.

The container has no Docker engine, toolkit package or GPU: kind and kubectl are stand-in scripts
installed from file:// URLs with their checksums, which is the air-gapped install path.
"""

from __future__ import annotations

import hashlib
import json
import os

import testinfra.utils.ansible_runner
import yaml

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts("all")


def test_binaries_installed_executable_and_verified(host):
    for name, source in (("kind", "/srv/downloads/kind-linux-amd64"), ("kubectl", "/srv/downloads/kubectl")):
        binary = host.file("/usr/local/bin/%s" % name)
        assert binary.is_file and binary.mode == 0o755
        assert binary.sha256sum == host.file(source).sha256sum
    assert host.run("/usr/local/bin/kind version").stdout.split()[1] == "v0.29.0"


def test_toolkit_takes_gpus_from_volume_mounts(host):
    lines = host.file("/etc/nvidia-container-runtime/config.toml").content_string.splitlines()
    key = [i for i, line in enumerate(lines) if "accept-nvidia-visible-devices-as-volume-mounts" in line]
    assert [lines[i] for i in key] == ["accept-nvidia-visible-devices-as-volume-mounts = true"]
    first_section = next(i for i, line in enumerate(lines) if line.startswith("["))
    assert key[0] < first_section, "a top-level TOML key must come before the first section"
    assert "[nvidia-container-runtime]" in lines


def test_docker_runs_the_nvidia_runtime_and_keeps_its_settings(host):
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["runtimes"]["nvidia"] == {"path": "/usr/bin/nvidia-container-runtime", "args": []}
    assert config["default-runtime"] == "nvidia"
    assert config["log-driver"] == "json-file" and config["log-opts"] == {"max-size": "10m"}


def test_kind_config_mounts_the_pipe_everywhere_and_one_gpu_per_worker(host):
    config = yaml.safe_load(host.file("/etc/gpulab-mps/kind-gpulab.yaml").content_string)
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert [n["role"] for n in config["nodes"]] == ["control-plane", "worker", "worker"]
    for node in config["nodes"]:
        assert {"hostPath": "/tmp/nvidia-mps", "containerPath": "/tmp/nvidia-mps"} in node["extraMounts"]
    devices = [[m["containerPath"] for m in n["extraMounts"] if m["hostPath"] == "/dev/null"] for n in config["nodes"]]
    assert devices == [[], ["/var/run/nvidia-container-devices/0"], ["/var/run/nvidia-container-devices/1"]]


def test_nothing_installed_by_the_wrong_checksums(host):
    assert not host.file("/opt/wrong-checksum/bin/kind").exists
    expected = hashlib.sha256(host.file("/srv/downloads/kubectl").content).hexdigest()
    assert host.file("/usr/local/bin/kubectl").sha256sum == expected
