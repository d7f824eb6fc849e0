# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure parts of the cluster lane's collection scenarios (tests/cluster/collection.py, scenarios.py, the record
callback) without a cluster: the inventory the collection runs with, the stand-in wrapper, how a run's output and
record are read, and what counts as left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(ROOT, "tests", "cluster"))

import lane_module  # noqa: E402

lane = lane_module.load()
import cluster as cluster_mod  # noqa: E402
import collection  # noqa: E402
import scenarios  # noqa: E402

RECAP = """PLAY RECAP *********************************************************************
localhost                  : ok=55   changed=8    unreachable=0    failed=0    skipped=26   rescued=0    ignored=0
"""


def test_the_inventory_targets_the_lane_cluster_as_an_existing_one():
    layout = cluster_mod.Layout()
    paths = collection.Paths(layout.state)
    inventory = collection.inventory(paths, layout, "/venv/bin/python", "docker.io/gpulab/lane-tools:1",
                                     extra={"gpulab_mps_owner": "plugin"})
    host = inventory["all"]["children"]["gpu_hosts"]
    assert host["hosts"] == {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": "/venv/bin/python"}}
    values = host["vars"]
    assert (values["kind_cluster_target"], values["kind_cluster_context"]) == ("existing", "lane")
    assert values["kind_cluster_kubeconfig"] == layout.kubeconfig("admin") == values["fleet_kubeconfig"]
    assert values["device_plugin_nodes"] == [{"name": "lane-node", "gpus": "all"}]
    assert values["gpulab_mps_owner"] == "plugin" and values["device_plugin_replicas"] == 20
    # Every directory the host stages write is under the lane's state directory, which its teardown removes.
    for name in ("mps_host_pipe_directory", "mps_host_log_directory", "mps_host_state_directory",
                 "gpulab_mps_qos_directory", "gpulab_mps_config_directory", "gpulab_mps_lib_directory",
                 "mps_host_unit_directory", "mps_host_tmpfiles_directory", "preflight_control_binary"):
        assert values[name].startswith(layout.state + "/"), name
    json.dumps(inventory)


def test_the_wrapper_gives_the_stand_in_the_lane_gpus(tmp_path):
    wrapper = tmp_path / "nvidia-cuda-mps-control"
    wrapper.write_text(collection.standin_wrapper(os.path.join(ROOT, "tests", "standins", "nvidia-cuda-mps-control"), 4,
                                                  python=sys.executable))
    wrapper.chmod(0o755)
    env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=str(tmp_path / "pipe"), CUDA_MPS_LOG_DIRECTORY=str(tmp_path / "log"))
    env.pop("GPULAB_STANDIN_GPUS", None)
    subprocess.run([str(wrapper), "-d"], env=env, check=True, timeout=30)
    try:
        ask = subprocess.run([str(wrapper)], input="set_default_device_pinned_mem_limit 3 1630M\n"
                             "get_default_device_pinned_mem_limit 3\n", env=env, capture_output=True, text=True,
                             timeout=30, check=False)
        assert ask.stdout == "1G\n"            # device 3 exists (a one-GPU stand-in ignores it silently)
    finally:
        subprocess.run([str(wrapper)], input="quit\n", env=env, capture_output=True, text=True, timeout=30, check=False)


def test_recap_and_the_record_are_read():
    assert collection.recap("noise\n" + RECAP) == {"localhost": {
        "ok": 55, "changed": 8, "unreachable": 0, "failed": 0, "skipped": 26, "rescued": 0, "ignored": 0}}
    assert collection.recap("no recap") == {}
    record = [{"t": 1.0, "task": "gpulab.mps.mps_dialtone : Start the dial-tone pod and wait until it runs",
               "status": "changed", "host": "localhost", "ignored": False, "msg": ""},
              {"t": 2.5, "task": "Check that MPS answered inside the pod", "status": "ok", "host": "localhost",
               "ignored": False, "msg": "MPS daemon answered"},
              {"t": 3.0, "task": "Drain - cordon and drain the Kubernetes node", "status": "skipped",
               "host": "localhost", "ignored": False, "msg": ""}]
    assert collection.first_time(record, collection.DIALTONE_POD_OK) == 2.5
    assert collection.first_time(record, "Start the dial-tone pod and wait until it runs") == 1.0
    assert collection.first_time(record, collection.DRAIN_TASK) is None
    assert [e["status"] for e in collection.entries_of(record, collection.DRAIN_TASK)] == ["skipped"]
    assert collection.changed_tasks(record) == [
        "gpulab.mps.mps_dialtone : Start the dial-tone pod and wait until it runs (localhost)"]


def test_the_record_callback_writes_one_line_per_task(tmp_path):
    playbook = tmp_path / "p.yml"
    playbook.write_text("- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n"
                        "    - {name: One, ansible.builtin.debug: {msg: hello}}\n"
                        "    - {name: Two, ansible.builtin.command: 'true', changed_when: true}\n"
                        "    - {name: Three, ansible.builtin.fail: {msg: refused}, ignore_errors: true}\n")
    record = tmp_path / "record.jsonl"
    binary = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable)) or shutil.which("ansible-playbook")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_CALLBACK_PLUGINS=collection.CALLBACKS,
               ANSIBLE_CALLBACKS_ENABLED=collection.RECORD_CALLBACK, GPULAB_LANE_RECORD=str(record))
    started = time.time()
    done = subprocess.run([binary, "-i", "localhost,", "-e", "ansible_python_interpreter=%s" % sys.executable,
                           str(playbook)], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-2000:]
    entries = collection.read_record(str(record))
    assert [(e["task"], e["status"], e["ignored"]) for e in entries] == [
        ("One", "ok", False), ("Two", "changed", False), ("Three", "failed", True)]
    assert entries[0]["msg"] == "hello" and entries[2]["msg"] == "refused" and entries[1]["rc"] == 0
    assert all(started <= e["t"] <= time.time() for e in entries)


def test_describe_lines_are_seed_004s_grep():
    text = ("Labels:             nvidia.com/gpu.present=true\nCapacity:\n  cpu:                2\n"
            "  nvidia.com/gpu:     80\nAllocatable:\n  nvidia.com/gpu:     80\n")
    assert collection.nvidia_lines(text) == ["Labels:             nvidia.com/gpu.present=true",
                                             "  nvidia.com/gpu:     80", "  nvidia.com/gpu:     80"]


NODE = {"metadata": {"name": "lane-node", "labels": {"kubernetes.io/hostname": "lane-node"}, "annotations": {}},
        "spec": {}, "status": {"allocatable": {"cpu": "2"}}}


def node_with(labels=None, annotations=None, cordoned=False):
    node = json.loads(json.dumps(NODE))
    node["metadata"]["labels"].update(labels or {})
    node["metadata"]["annotations"].update(annotations or {})
    if cordoned:
        node["spec"]["unschedulable"] = True
    return collection.node_state(node)


def test_nothing_left_when_the_node_is_as_before():
    before = node_with()
    assert collection.leftovers(before, node_with(), [], ["other"], ["other"]) == []


def test_what_the_collection_left_is_named():
    before = node_with()
    after = node_with({"nvidia.com/gpu.present": "true"}, {"gpulab.mps/added-labels": "x"}, cordoned=True)
    objects = [{"kind": "Pod", "metadata": {"name": "mps-dialtone", "namespace": "default"}}]
    assert collection.leftovers(before, after, objects, [], ["nvidia"]) == [
        "Pod default/mps-dialtone is left (labelled app.kubernetes.io/managed-by=gpulab.mps)",
        'node label nvidia.com/gpu.present is "true", it was null before the collection ran',
        'node annotation gpulab.mps/added-labels is "x", it was null before the collection ran',
        "the node is left cordoned", "RuntimeClass nvidia is left"]


def test_a_label_of_another_kind_does_not_count():
    assert collection.leftovers(node_with(), node_with({"topology.kubernetes.io/zone": "a"}), []) == []


def test_the_share_commands_of_seed_004s_node():
    assert scenarios.share_commands(4, 32601, 20) == [
        "set_default_device_pinned_mem_limit 0 1630M", "set_default_device_pinned_mem_limit 1 1630M",
        "set_default_device_pinned_mem_limit 2 1630M", "set_default_device_pinned_mem_limit 3 1630M",
        "set_default_active_thread_percentage 5"]
    logged = ("[2026-12-04 12:39:35.301 Control   7] Cmd:set_default_active_thread_percentage 5.0\n" +
              "".join("[2026-12-04 12:39:35.3%02d Control   7] Cmd:set_default_device_pinned_mem_limit %d 1630M\n"
                      % (i, i) for i in range(4)))
    assert scenarios.holds_share(collection.daemon_commands(logged), 4, 32601, 20)
    assert not scenarios.holds_share(collection.daemon_commands(logged), 4, 32601, 10)


def test_control_log_times_are_read():
    text = ("[2026-12-04 12:40:01.250 Control  9] Accepting connection...\n"
            "[2026-12-04 12:40:01.251 Control  9] Cmd:ps\n[2026-12-04 12:40:02.000 Control  9] Cmd:quit\n")
    found = scenarios.log_times(text, r"^Cmd:ps$")
    assert [line for _t, line in found] == ["Cmd:ps"]
    assert abs(found[0][0] - (time.mktime(time.strptime("2026-12-04 12:40:01", "%Y-%m-%d %H:%M:%S")) + 0.251)) < 1e-3


def test_scenarios_are_named_and_ordered():
    assert lane.parse_args(["--out", "/tmp/x"]).scenarios == ["host", "plugin", "fork", "rendered"]
    assert lane.parse_args(["--out", "/tmp/x", "--scenarios", "rendered,host"]).scenarios == ["host", "rendered"]
    with pytest.raises(SystemExit):
        lane.parse_args(["--out", "/tmp/x", "--scenarios", "kind"])


def test_the_fork_binaries_are_wanted_only_for_the_fork():
    def dp_paths(names):
        return [w.path for option, _attr, wanted in lane.folders(names) if option == "--dp-bin" for w in wanted]
    assert "fork/nvidia-device-plugin" not in dp_paths(["host", "rendered"])
    assert {"fork/nvidia-device-plugin", "fork/mps-control-daemon"} <= set(dp_paths(["fork"]))
