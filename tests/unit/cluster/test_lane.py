# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tests/cluster/lane.py without binaries: its arguments, the check of the folders, and how it reads what the real
cluster and the real plugin say (recorded from the lane's runs of 2026-12-04 in fixtures/)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(ROOT, "tests", "cluster"))
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")

import lane_module  # noqa: E402

lane = lane_module.load()
import binaries  # noqa: E402  (tests/gpu/device_plugin, put on the path by lane)

# What the real cluster said, verbatim (lane runs of 2026-12-04, summary of docs/evidence/2026-12-04-cluster-lane).
RUNTIME_CLASS = ('Error creating: pods "nvidia-device-plugin-" is forbidden: pod rejected: RuntimeClass "nvidia" '
                 'not found')
NOT_SHARED = ('failed to generate container "c19c840b0c3ba0fbe0cb7003e85470b0cc573d87f097267dc09931f90d55194d" spec: '
              'failed to generate spec: path "/run/nvidia/mps" is mounted on "/" but it is not a shared mount')
NO_DNS = ('pod: "nvidia-device-plugin-5fwl9_nvidia-device-plugin(75ff7fb1-745f-4c34-b50c-17aaea78fe01)". kubelet does '
          'not have ClusterDNS IP configured and cannot create Pod using "ClusterFirst" policy. Falling back to '
          '"Default" policy.')


def read(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


def args(*extra):
    return lane.parse_args(["--out", "/tmp/x"] + list(extra))


def test_out_is_required(capsys):
    with pytest.raises(SystemExit):
        lane.parse_args([])
    assert "--out" in capsys.readouterr().err


def test_defaults_are_seed_004s_node():
    parsed = args()
    assert (parsed.gpus, parsed.gpu_memory_mib, parsed.replicas, parsed.owner) == (4, 32601, 20, "host")
    assert parsed.gpu_memory_mib // parsed.replicas == 1630


def test_without_folders_every_file_and_where_to_get_it_is_named(tmp_path):
    with pytest.raises(binaries.BinariesError) as error:
        lane.take_all(args("--dp-bin", str(tmp_path / "nowhere")), str(tmp_path))
    text = str(error.value)
    assert "--kube-bin is not given" in text and "--nvml-mock is not given" in text
    assert "--dp-bin '%s': no such folder" % (tmp_path / "nowhere") in text
    for wanted in lane.KUBE_BINARIES + lane.DP_BINARIES + lane.NVML_FILES:
        assert wanted.path in text
    assert "kubernetes-server-linux-amd64.tar.gz" in text and "v1.36.2" in text
    assert "nvcr.io/nvidia/k8s-device-plugin:v0.20.0" in text and "mock NVML" in text


def fake(folder, path, output):
    target = folder / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("#!/bin/sh\necho '%s'\n" % output)
    target.chmod(target.stat().st_mode | stat.S_IXUSR)
    return target


def folders(tmp_path, kube_version="v1.36.2", dp_version="v0.20.0"):
    kube, dp, nvml = tmp_path / "kube", tmp_path / "dp", tmp_path / "nvml"
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"):
        fake(kube, name, "Kubernetes %s" % kube_version)
    fake(kube, "kubectl", "Client Version: %s" % kube_version)
    fake(dp, "upstream/nvidia-device-plugin", "NVIDIA Device Plugin version %s" % dp_version)
    fake(dp, "upstream/mps-control-daemon", "NVIDIA MPS Control Daemon version %s" % dp_version)
    fake(dp, "upstream/config-manager", "GLOBAL OPTIONS: --node-label value")
    fake(dp, "fork/nvidia-device-plugin", "NVIDIA Device Plugin version v0.19.0-dev commit: 52596d72c2552fd0")
    fake(dp, "fork/mps-control-daemon", "NVIDIA MPS Control Daemon version v0.19.0-dev commit: 52596d72c2552fd0")
    (nvml / "usr" / "lib64").mkdir(parents=True)
    (nvml / "usr" / "lib64" / "libnvidia-ml.so.1").write_bytes(b"\x7fELF not really")
    (nvml / "config").mkdir()
    (nvml / "config" / "config.yaml").write_text("version: '1.0'\n")
    return ["--kube-bin", str(kube), "--dp-bin", str(dp), "--nvml-mock", str(nvml)]


def test_folders_with_every_file_are_taken(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    found, report = lane.take_all(args(*folders(tmp_path)), str(work))
    assert sorted(found) == sorted(["kube_bin:%s" % n for n in ("kube-apiserver", "kube-controller-manager",
                                                                "kube-scheduler", "kubelet", "kubectl")]
                                   + ["dp_bin:upstream/%s" % n for n in ("nvidia-device-plugin", "mps-control-daemon",
                                                                         "config-manager")]
                                   + ["dp_bin:fork/%s" % n for n in ("nvidia-device-plugin", "mps-control-daemon")]
                                   + ["nvml_mock:usr/lib64/libnvidia-ml.so.1", "nvml_mock:config/config.yaml"])
    assert all(path.startswith(str(work)) for path in found.values())
    assert [r["folder"] for r in report].count("--kube-bin") == 5


def test_a_wrong_version_in_each_folder_is_named_at_once(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(binaries.BinariesError) as error:
        lane.take_all(args(*folders(tmp_path, kube_version="v1.35.0", dp_version="v0.19.0")), str(work))
    text = str(error.value)
    assert text.count("printed") == 7          # 5 Kubernetes binaries, 2 of the plugin
    assert "--kube-bin:" in text and "--dp-bin:" in text


def test_checksums_are_checked_per_folder(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    argv = folders(tmp_path)
    kubelet = (tmp_path / "kube" / "kubelet").read_bytes()
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("%s  kubelet\n%s  upstream/config-manager\n" % (hashlib.sha256(kubelet).hexdigest(), "0" * 64))
    with pytest.raises(binaries.BinariesError) as error:
        lane.take_all(args(*(argv + ["--sha256", str(sums)])), str(work))
    assert "upstream/config-manager" in str(error.value) and "the checksum file says 0000" in str(error.value)
    assert "kubelet" not in str(error.value)


@pytest.mark.parametrize("observation, finding", [
    ({"kind": "event", "reason": "FailedCreate", "message": RUNTIME_CLASS}, "F1"),
    ({"kind": "event", "reason": "MissingClusterDNS", "message": NO_DNS}, "E1"),
    ({"kind": "event", "reason": "Failed", "message": "Error: " + NOT_SHARED}, "E2"),
    ({"kind": "container", "reason": "CreateContainerError", "message": NOT_SHARED}, "E2"),
    ({"kind": "container", "reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}, None),
    ({"kind": "apply", "reason": "stderr", "message": 'Warning: unknown field "spec.template.spec.foo"'}, None),
])
def test_what_the_cluster_says_is_matched_to_the_known_findings(observation, finding):
    assert lane.classify(observation) == finding


def test_pod_problems_reports_waiting_and_failed_containers_not_normal_start_up():
    pod = {"metadata": {"name": "nvidia-device-plugin-mps-control-daemon-m9846"},
           "status": {"phase": "Pending",
                      "initContainerStatuses": [
                          {"name": "mps-control-daemon-mounts",
                           "state": {"waiting": {"reason": "CreateContainerError", "message": NOT_SHARED}}},
                          {"name": "mps-control-daemon-init", "state": {"waiting": {"reason": "PodInitializing"}}}],
                      "containerStatuses": [
                          {"name": "mps-control-daemon-ctr", "state": {"waiting": {"reason": "PodInitializing"}}},
                          {"name": "sidecar", "state": {"running": {}},
                           "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "boom"}}}]}}
    assert lane.pod_problems(pod) == [
        {"kind": "container", "object": "pod/nvidia-device-plugin-mps-control-daemon-m9846",
         "container": "mps-control-daemon-mounts", "reason": "CreateContainerError", "message": NOT_SHARED},
        {"kind": "container", "object": "pod/nvidia-device-plugin-mps-control-daemon-m9846", "container": "sidecar",
         "reason": "Error (exit 1)", "message": "boom"}]


def test_a_pod_refused_at_admission_is_a_problem():
    pod = {"metadata": {"name": "gpu-two"}, "status": {"phase": "Failed", "reason": "UnexpectedAdmissionError",
                                                       "message": "Pod was rejected: Allocate failed"}}
    assert lane.pod_problems(pod) == [{"kind": "pod", "object": "pod/gpu-two", "container": "",
                                       "reason": "UnexpectedAdmissionError",
                                       "message": "Pod was rejected: Allocate failed"}]


def test_warning_events_only():
    events = {"items": [
        {"type": "Normal", "reason": "Scheduled", "message": "assigned", "involvedObject": {"kind": "Pod", "name": "p"}},
        {"type": "Warning", "reason": "FailedCreate", "message": RUNTIME_CLASS, "count": 4,
         "involvedObject": {"kind": "DaemonSet", "name": "nvidia-device-plugin"}}]}
    assert lane.warning_events(events) == [{"kind": "event", "object": "daemonset/nvidia-device-plugin",
                                            "container": "", "reason": "FailedCreate", "message": RUNTIME_CLASS,
                                            "count": 4}]


def test_the_same_disagreement_on_a_new_pod_is_not_a_new_one():
    one = {"kind": "container", "object": "pod/nvidia-device-plugin-mps-control-daemon-m9846",
           "container": "mps-control-daemon-mounts", "reason": "CreateContainerError", "message": NOT_SHARED}
    two = dict(one, object="pod/nvidia-device-plugin-mps-control-daemon-qcvtp",
               message=NOT_SHARED.replace("c19c840b", "301dc371"))
    assert lane.observation_key(one) == lane.observation_key(two)
    assert lane.observation_key(one) != lane.observation_key(dict(one, reason="RunContainerError"))


def test_the_running_config_of_the_real_plugin_owner_host():
    running = lane.running_config_of(read("plugin-v0.20.0-owner-host.log"))
    assert running["flags"]["plugin"]["containerDriverRoot"] == "/driver-root"
    assert lane.sharing_summary(running) == {"strategy": "timeSlicing", "replicas": {"nvidia.com/gpu": 20},
                                             "failRequestsGreaterThanOne": True}


def test_the_running_config_after_a_retry_is_the_last_one_owner_plugin():
    text = read("plugin-v0.20.0-owner-plugin.log")
    assert text.count("Running with config:") == 2          # it retried after 30 s: its MPS daemon was not up yet
    assert lane.sharing_summary(lane.running_config_of(text)) == {
        "strategy": "mps", "replicas": {"nvidia.com/gpu": 20}, "failRequestsGreaterThanOne": True}


def test_the_rendered_config_reads_like_the_running_one():
    rendered = {"version": "v1", "flags": {"migStrategy": "none"},
                "sharing": {"timeSlicing": {"renameByDefault": False, "failRequestsGreaterThanOne": True,
                                            "resources": [{"name": "nvidia.com/gpu", "replicas": 20}]}}}
    running = lane.running_config_of(read("plugin-v0.20.0-owner-host.log"))
    assert lane.sharing_summary(rendered) == lane.sharing_summary(running)
    assert lane.running_config_of("no config here") is None


def test_the_plugins_mps_daemon_set_the_replicas_share():
    seen = lane.daemon_commands(read("mps-control-daemon-v0.20.0-standin.log"))
    want = lane.share_commands(4, 32601, 20)
    assert want == ["set_default_device_pinned_mem_limit 0 1630M", "set_default_device_pinned_mem_limit 1 1630M",
                    "set_default_device_pinned_mem_limit 2 1630M", "set_default_device_pinned_mem_limit 3 1630M",
                    "set_default_active_thread_percentage 5"]
    assert sorted(want) == seen


def test_label_args():
    assert lane.label_args({"nvidia.com/mps.capable": "true", "gpulab.mps/mps-owner": "host"}) == [
        "gpulab.mps/mps-owner=host", "nvidia.com/mps.capable=true"]


def test_a_run_without_binaries_writes_its_record_and_fails(tmp_path, capsys):
    out = tmp_path / "out"
    assert lane.main(["--out", str(out)]) == 1
    summary = (out / "summary.txt").read_text()
    assert "--kube-bin is not given" in summary and summary.rstrip().splitlines()[-1].startswith("VERDICT: FAIL")
    results = json.loads((out / "results.json").read_text())
    assert results["ok"] is False and results["checks"] == []


@pytest.mark.parametrize("version, shown", [
    ("NVIDIA Device Plugin version v0.20.0\ncommit: 1b826acc", "NVIDIA Device Plugin version v0.20.0"),
    ("NAME:\n   config-manager - A new cli application\n\nUSAGE:", "no --version; --help: config-manager - A new cli "
                                                                   "application"),
    (None, "data"),
])
def test_binary_line(version, shown):
    assert lane.binary_line({"path": "p", "sha256": "ab" * 32, "version": version}) == "p sha256 %s (%s)" % (
        "ab" * 6, shown)
