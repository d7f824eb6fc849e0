# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tests/cluster/cluster.py without a cluster: the configs, command lines, certificates and kubeconfigs it writes.

What ENVIRONMENT.md says it took to run a kubelet here must be in them (restrict_oom_score_adj, cgroupfs with
failCgroupV1 false, a node address that is not loopback, the API server advertising it), and every path they name
must be one the teardown removes (the lane's state and data directories, /var/lib/kubelet), or the host check fails.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(ROOT, "tests", "cluster"))

import cluster  # noqa: E402

LAYOUT = cluster.Layout()


def test_containerd_has_its_own_root_state_socket_and_the_fixes_this_machine_needs():
    config = tomllib.loads(cluster.containerd_config(LAYOUT))
    assert config["root"] == LAYOUT.data + "/containerd"
    assert config["state"] == LAYOUT.state + "/containerd/state"
    assert config["grpc"]["address"] == LAYOUT.containerd_socket
    assert config["plugins"]["io.containerd.internal.v1.opt"]["path"].startswith(LAYOUT.data + "/")
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True        # oom_score_adj -998 is refused here (no CAP_SYS_RESOURCE)
    assert cri["sandbox_image"] == cluster.PAUSE_IMAGE
    assert cri["cni"]["conf_dir"] == LAYOUT.state + "/cni/net.d"
    runtimes = cri["containerd"]["runtimes"]
    assert sorted(runtimes) == ["nvidia", "runc"]          # runtimeClassName: nvidia has a handler (plain runc)
    for runtime in runtimes.values():
        assert runtime["runtime_type"] == "io.containerd.runc.v2"
        assert runtime["options"] == {"SystemdCgroup": False, "Root": LAYOUT.state + "/containerd/runc"}


def test_kubelet_runs_on_cgroup_v1_with_cgroupfs_on_the_node_address():
    config = json.loads(cluster.kubelet_config(LAYOUT))
    assert config["failCgroupV1"] is False and config["cgroupDriver"] == "cgroupfs"
    assert config["address"] == LAYOUT.node_ip != "127.0.0.1"
    assert config["containerRuntimeEndpoint"] == "unix://" + LAYOUT.containerd_socket
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authorization"]["mode"] == "Webhook"
    assert config["imageGCHighThresholdPercent"] == 100      # no registry: the imported images must stay
    argv = cluster.kubelet_argv(LAYOUT, "/bin/kubelet")
    assert "--node-ip=%s" % LAYOUT.node_ip in argv and "--root-dir=/var/lib/kubelet" in argv


def test_the_api_server_advertises_the_node_address_and_the_control_plane_waits_for_it():
    argv = cluster.apiserver_argv(LAYOUT, "/bin/kube-apiserver")
    assert "--advertise-address=%s" % LAYOUT.node_ip in argv
    assert "--service-cluster-ip-range=%s" % LAYOUT.service_cidr in argv
    assert "--etcd-servers=http://127.0.0.1:2379" in argv
    manager = cluster.controller_manager_argv(LAYOUT, "/bin/kcm")
    assert "--kubeconfig=%s" % LAYOUT.kubeconfig("controller-manager") in manager
    assert any(a.startswith("--controllers=") and "-cloud-node-lifecycle" in a for a in manager)
    assert "--kubeconfig=%s" % LAYOUT.kubeconfig("scheduler") in cluster.scheduler_argv(LAYOUT, "/bin/ks")
    etcd = cluster.etcd_argv(LAYOUT)
    assert etcd[etcd.index("--data-dir") + 1] == LAYOUT.data + "/etcd"
    assert all(url.startswith("http://127.0.0.1:") for url in etcd if url.startswith("http"))


def paths_in(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from paths_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from paths_in(item)
    elif isinstance(value, str):
        for part in value.replace("=", " ").split():
            part = part.replace("unix://", "")
            if part.startswith("/"):
                yield part


def test_every_path_the_lane_writes_is_one_its_teardown_removes():
    """The host check fails on anything left: the configs may only name the lane's own directories, the kubelet's
    root (fixed: the device plugins' socket directory) and what is only read (CNI plugins, resolv.conf)."""
    read_only = (LAYOUT.cni_bin, "/etc/resolv.conf")
    owned = (LAYOUT.state, LAYOUT.data, LAYOUT.kubelet_root)
    written = [tomllib.loads(cluster.containerd_config(LAYOUT)), json.loads(cluster.kubelet_config(LAYOUT)),
               json.loads(cluster.cni_conflist(LAYOUT)), cluster.etcd_argv(LAYOUT),
               cluster.apiserver_argv(LAYOUT, "kube-apiserver"), cluster.controller_manager_argv(LAYOUT, "kcm"),
               cluster.scheduler_argv(LAYOUT, "ks"), cluster.kubelet_argv(LAYOUT, "kubelet")]
    paths = sorted(set(p for item in written for p in paths_in(item)))
    assert paths, "no path found: the walk is broken"
    stray = [p for p in paths if not p.startswith(tuple(o + "/" for o in owned) + read_only) and p not in owned]
    assert stray == []


def test_pods_get_a_bridge_network_in_the_namespace_and_reach_the_api_server_by_its_service_ip():
    conflist = json.loads(cluster.cni_conflist(LAYOUT))
    bridge, loopback = conflist["plugins"]
    assert bridge["type"] == "bridge" and bridge["ipMasq"] is False and loopback == {"type": "loopback"}
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.124.0.0/24", "gateway": "10.124.0.1"}]]
    assert bridge["ipam"]["dataDir"].startswith(LAYOUT.state + "/")
    rules = cluster.nft_rules(LAYOUT)
    assert rules.count("ip daddr 10.96.0.1 tcp dport 443 dnat to 10.123.0.1:6443") == 2   # pods and the node itself
    assert "hook prerouting" in rules and "hook output" in rules


@pytest.mark.parametrize("cidr, gateway", [("10.124.0.0/24", "10.124.0.1"), ("192.168.7.0/28", "192.168.7.1")])
def test_gateway(cidr, gateway):
    assert cluster._gateway(cidr) == gateway


def test_certificates_name_what_each_client_is_authorized_as():
    certs = dict((name, (cn, org, sans, usage)) for name, cn, org, sans, usage in cluster.certificates(LAYOUT))
    assert sorted(certs) == sorted(["apiserver", "apiserver-kubelet-client", "admin", "controller-manager",
                                    "scheduler", "kubelet", "kubelet-serving"])
    cn, org, sans, usage = certs["apiserver"]
    assert {"IP:127.0.0.1", "IP:10.123.0.1", "IP:10.96.0.1", "DNS:kubernetes.default.svc"} <= set(sans)
    assert usage == "serverAuth"
    assert certs["kubelet"][:2] == ("system:node:lane-node", "system:nodes")     # the Node authorizer's rule
    assert certs["kubelet-serving"][2] == ["IP:10.123.0.1", "DNS:lane-node"]
    assert certs["admin"][1] == certs["apiserver-kubelet-client"][1] == "system:masters"
    assert certs["controller-manager"][0] == "system:kube-controller-manager"
    for user in cluster.KUBECONFIG_USERS:
        assert user in certs


def test_kubeconfig_embeds_the_certificates():
    text = cluster.kubeconfig_text("https://127.0.0.1:6443", "CA PEM", b"CERT PEM", "KEY PEM", "kubelet")
    config = json.loads(text)
    assert config["current-context"] == "lane"
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]) == b"CA PEM"
    user = config["users"][0]
    assert user["name"] == "kubelet"
    assert base64.b64decode(user["user"]["client-certificate-data"]) == b"CERT PEM"
    assert base64.b64decode(user["user"]["client-key-data"]) == b"KEY PEM"


@pytest.mark.parametrize("before, parent, name, expected", [
    ({"/run": ["lock"]}, "/run", "containerd", True),             # made during the run
    ({"/run": ["lock", "containerd"]}, "/run", "containerd", False),   # a host containerd's: not the lane's
    ({"/run": ["lock"]}, "/run", "postgresql", False),             # never a name the lane makes
    ({"/var/log": None}, "/var/log", "pods", True),
    ({}, "/srv", "data", False),
])
def test_the_teardown_removes_only_what_it_made(before, parent, name, expected):
    assert cluster.removable(before, parent, name) is expected


@pytest.mark.parametrize("conditions, expected", [
    ([{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}], True),
    ([{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}], False),
    ([], None),
])
def test_node_ready(conditions, expected):
    assert cluster.node_ready({"status": {"conditions": conditions}}) is expected


def test_a_lane_that_is_not_root_starts_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    lane_cluster = cluster.Cluster(cluster.Layout(state=str(tmp_path / "state")), {}, str(tmp_path / "logs"))
    with pytest.raises(cluster.LaneError, match="runs as root"):
        lane_cluster.preflight()
    assert not (tmp_path / "state").exists()


# The command lines of the lane's daemons as /proc showed them (lane run of 2026-12-04, killed before its teardown).
CMDLINES = {
    "etcd": "etcd --name lane --data-dir /var/lib/gpulab-cluster-lane/etcd --listen-client-urls http://127.0.0.1:2379",
    "kube-apiserver": "/tmp/gpulab-cluster-lane-n4avs9kz/kube_bin/kube-apiserver --etcd-servers=http://127.0.0.1:2379 "
                      "--tls-cert-file=/run/gpulab-cluster-lane/pki/apiserver.crt",
    "kube-controller-manager": "/tmp/gpulab-cluster-lane-n4avs9kz/kube_bin/kube-controller-manager "
                               "--kubeconfig=/run/gpulab-cluster-lane/pki/controller-manager.kubeconfig",
    "kube-scheduler": "/tmp/gpulab-cluster-lane-n4avs9kz/kube_bin/kube-scheduler "
                      "--kubeconfig=/run/gpulab-cluster-lane/pki/scheduler.kubeconfig",
    "containerd": "containerd --config /run/gpulab-cluster-lane/containerd/config.toml",
    "kubelet": "/tmp/gpulab-cluster-lane-n4avs9kz/kube_bin/kubelet --config=/run/gpulab-cluster-lane/kubelet.json",
}


@pytest.mark.parametrize("name", sorted(CMDLINES))
def test_recover_knows_each_daemon_by_its_command_line(name):
    import re
    matches = [n for n, pattern in cluster.DAEMONS if re.match(pattern, CMDLINES[name])]
    assert matches == [name]
    assert any(marker in CMDLINES[name] for marker in LAYOUT.markers())


def test_an_adopted_daemon_is_stopped_by_its_pid():
    import subprocess
    import time
    child = subprocess.Popen(["sleep", "60"])
    adopted = cluster.Adopted(child.pid, ["sleep", "60"])
    assert adopted.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        adopted.wait(timeout=0.2)
    adopted.send_signal(15)
    child.wait(timeout=10)          # reaped here, as init reaps the orphan of a killed lane
    time.sleep(0.1)
    assert adopted.wait(timeout=5) == "gone"


def test_recover_without_a_record_says_so(tmp_path):
    lane_cluster = cluster.Cluster(cluster.Layout(state=str(tmp_path / "state")), {}, str(tmp_path))
    with pytest.raises(cluster.LaneError, match="no record of the host before the lane"):
        lane_cluster.recover()
