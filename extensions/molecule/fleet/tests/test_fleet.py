# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an operator checks after a fleet rollout: the summaries of the five rollouts of this
scenario (converge, kill, k8s, unready, gate: see side_effect.yml) and the nodes themselves.

The nodes are systemd containers with the NVIDIA STAND-INS of tests/standins/ (no GPU here); the
values they report (driver 580.159.04, H100 80GB HBM3) are the ones recorded on a real H100.
"""

from __future__ import annotations

import calendar
import datetime
import json
import os
import re

import pytest
import testinfra

EPHEMERAL = os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]
INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
HEALTHY = ["fleet-gpu-01", "fleet-gpu-02", "fleet-gpu-03", "fleet-gpu-04"]
UNTOUCHED = ["fleet-nodriver-01", "fleet-bare-01", "fleet-badvars-01", "fleet-badvalues-01", "fleet-gpu-06-late"]


def summary(name):
    with open(os.path.join(EPHEMERAL, "summary-%s.json" % name)) as handle:
        data = json.load(handle)
    return data, dict((node["node"], node) for node in data["nodes"])


def node_host(name):
    return testinfra.get_host("ansible://%s?ansible_inventory=%s" % (name, INVENTORY))


def test_converge_rolled_out_every_healthy_node():
    data, nodes = summary("converge")
    assert data["state"] == "complete" and not data["stopped"]
    assert sorted(nodes) == HEALTHY
    for name in HEALTHY:
        assert nodes[name]["result"] == "ok", nodes[name]
        assert nodes[name]["driver"] == "580.159.04"
        assert nodes[name]["gpu_models"] == ["NVIDIA H100 80GB HBM3"]
        assert nodes[name]["mps"].startswith("running")
    assert nodes["fleet-gpu-02"]["gpus"] == 2 and nodes["fleet-gpu-01"]["gpus"] == 1


def test_rerun_that_changes_nothing_skips_the_settle_wait_and_says_so():
    # summary-converge.json is the idempotence run's: the second rollout over the same nodes.
    data, nodes = summary("converge")
    for name in HEALTHY:
        assert nodes[name]["changed"] is False, nodes[name]
        assert nodes[name]["health_gate"].startswith("unchanged daemon pid "), nodes[name]
        assert nodes[name]["health_gate"].endswith("settle skipped")


def test_killed_daemon_was_restarted_and_reported():
    data, nodes = summary("kill")
    assert data["counts"]["ok"] == 4, data["table"]
    assert nodes["fleet-gpu-03"]["mps_restarts"] >= 1
    assert "restarted" in nodes["fleet-gpu-03"]["mps"]
    assert [n for n in HEALTHY if nodes[n]["mps_restarts"]] == ["fleet-gpu-03"]
    # Nothing changed on fleet-gpu-03, but its daemon is not the one the apply read: the settle wait runs.
    assert nodes["fleet-gpu-03"]["health_gate"] == "settled 3 s", nodes["fleet-gpu-03"]
    assert [n for n in HEALTHY if nodes[n]["health_gate"].startswith("settled")] == ["fleet-gpu-03"]


@pytest.mark.parametrize("name, words", [
    ("fleet-nodriver-01", ["libnvidia-ml.so.1"]),
    ("fleet-bare-01", ["nvidia-ml-py"]),
    ("fleet-badvars-01", ["mps_host_service_manager", "upstart"]),
    ("fleet-badvalues-01", ["150", "lots"]),
])
def test_unready_nodes_were_excluded_with_their_reason(name, words):
    data, nodes = summary("unready")
    node = nodes[name]
    assert (node["result"], node["step"]) == ("excluded", "preflight"), node
    for word in words:
        assert word in node["reason"], node["reason"]
    assert node["mps"] == "untouched"


def test_unready_nodes_did_not_stop_the_others():
    data, nodes = summary("unready")
    assert [n for n in HEALTHY if nodes[n]["result"] == "ok"] == HEALTHY, data["table"]
    assert data["counts"] == dict(data["counts"], nodes=8, ok=4, excluded=4, failed=0)


def test_failed_batch_stopped_the_rollout_and_says_which_node_and_why():
    data, nodes = summary("gate")
    assert data["stopped"] is True, data["table"]
    assert "fleet-gpu-05-broken" in data["state"]
    assert nodes["fleet-gpu-01"]["result"] == "ok"
    broken = nodes["fleet-gpu-05-broken"]
    assert broken["result"] == "failed"
    assert broken["step"] in ("apply", "health gate"), broken
    assert broken["reason"], broken
    assert nodes["fleet-gpu-06-late"]["result"] == "not reached"
    # The table an operator reads names the node and its reason on one line.
    assert any(line.startswith("fleet-gpu-05-broken") and broken["reason"][:40] in line for line in data["table"])


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_nodes_run_mps_under_systemd(name):
    host = node_host(name)
    service = host.service("nvidia-mps.service")
    assert service.is_running and service.is_enabled
    answer = host.run("echo get_default_active_thread_percentage | CUDA_MPS_PIPE_DIRECTORY=/run/nvidia-mps "
                      "/usr/local/nvidia/bin/nvidia-cuda-mps-control")
    assert (answer.rc, answer.stdout) == (0, "50.0\n")


@pytest.mark.parametrize("name", UNTOUCHED)
def test_excluded_and_unreached_nodes_were_not_touched(name):
    host = node_host(name)
    assert host.run("systemctl cat nvidia-mps.service").rc != 0, "%s got an MPS unit" % name
    assert not host.file("/run/nvidia-mps").exists


def k8s_journal():
    with open(os.path.join(EPHEMERAL, "k8s-journal.jsonl")) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def daemon_start_time(name):
    """Wall-clock time (epoch) of the last start of the node's MPS control daemon, from its control.log."""
    log = node_host(name).file("/var/log/nvidia-mps/control.log").content_string
    stamps = re.findall(r"^\[(\S+ \S+) Control\s+\d+\] Starting control daemon", log, re.MULTILINE)
    parsed = datetime.datetime.strptime(stamps[-1], "%Y-%m-%d %H:%M:%S.%f")
    return calendar.timegm(parsed.timetuple()) + parsed.microsecond / 1e6


def events(journal, node):
    return [(e["event"], e.get("pod")) for e in journal if e.get("node") == node]


def test_k8s_node_needing_change_is_drained_before_mps_and_uncordoned_after():
    # Kubernetes here is the STAND-IN API of tests/standins/fake_kube_api.py (see side_effect.yml).
    journal = k8s_journal()
    assert events(journal, "k8s-gpu-04") == [("cordon", None), ("evict", "default/work-k8s-gpu-04"), ("uncordon", None)]
    times = dict((e["event"], e["time"]) for e in journal if e.get("node") == "k8s-gpu-04")
    assert times["evict"] < daemon_start_time("fleet-gpu-04") < times["uncordon"]
    data, nodes = summary("k8s")
    assert nodes["fleet-gpu-04"]["kubernetes"] == "drained and uncordoned", data["table"]


def test_k8s_node_cordoned_before_the_rollout_stays_cordoned():
    journal = k8s_journal()
    assert events(journal, "fleet-gpu-02") == [("evict", "default/work-fleet-gpu-02")]
    nodes = summary("k8s")[1]
    assert nodes["fleet-gpu-02"]["kubernetes"] == "drained; left cordoned as it was before the rollout"


def test_k8s_nodes_are_read_once_a_batch():
    # Two batches of two (fleet_serial 2), each with a Kubernetes node: two NodeList reads, not one a node.
    assert [e["event"] for e in k8s_journal()].count("list-nodes") == 2


def test_k8s_node_that_needs_no_change_keeps_its_pods():
    assert events(k8s_journal(), "fleet-gpu-01") == []
    data, nodes = summary("k8s")
    assert nodes["fleet-gpu-01"]["kubernetes"] == "not drained (MPS needed no change)"
    assert data["counts"]["ok"] == 4 and data["state"] == "complete"


def test_unreached_node_reports_no_change_in_the_recap():
    # Preflight only reads (the MPS plan runs in check mode and is reported unchanged there).
    with open(os.path.join(EPHEMERAL, "rollout-gate.log")) as handle:
        log = re.sub(r"\x1b\[[0-9;]*m", "", handle.read())
    recap = re.search(r"^fleet-gpu-06-late\s+:.*$", log, re.MULTILINE).group(0)
    assert re.search(r"\bchanged=0\b", recap) and re.search(r"\bfailed=0\b", recap), recap
