# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pods (dial-tone and workload, one builder) and the diagnosis of the dial-tone's answers (the failures that
seed 001 names)."""

from __future__ import annotations

import pytest

from ansible_collections.gpulab.mps.plugins.module_utils import _pods as dt
from conftest import load_transcript, transcript_output


def test_host_pod_mounts_the_pipe_and_a_memory_shm():
    pod = dt.dialtone_pod(pipe_directory="/tmp/nvidia-mps/", host_ipc=False, node_name="gpulab-worker")
    spec = pod["spec"]
    container = spec["containers"][0]
    assert {"name": "CUDA_MPS_PIPE_DIRECTORY", "value": "/tmp/nvidia-mps"} in container["env"]
    assert {"name": "mps-pipe", "hostPath": {"path": "/tmp/nvidia-mps", "type": "Directory"}} in spec["volumes"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}} in spec["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert spec["hostIPC"] is False
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["nodeName"] == "gpulab-worker"
    assert spec["restartPolicy"] == "Never"
    assert container["command"] == ["sleep", "600"]
    assert spec["activeDeadlineSeconds"] == 660
    assert "resources" not in container


def test_host_ipc_is_configurable():
    assert dt.dialtone_pod(host_ipc=True)["spec"]["hostIPC"] is True


def test_plugin_pod_requests_a_replica_and_mounts_no_pipe():
    pod = dt.dialtone_pod(source="plugin", resource="nvidia.com/gpu0")
    container = pod["spec"]["containers"][0]
    assert container["resources"] == {"limits": {"nvidia.com/gpu0": 1}}
    assert all(v["name"] != "mps-pipe" for v in pod["spec"]["volumes"])
    assert all(e["name"] != "CUDA_MPS_PIPE_DIRECTORY" for e in container["env"])


@pytest.mark.parametrize("kwargs, message", [
    ({"source": "both"}, "source must be one of"),
    ({"name": "Dial_Tone"}, "not a DNS label"),
    ({"pipe_directory": "nvidia-mps"}, "absolute path"),
    ({"lifetime_seconds": 5}, "at least 30"),
])
def test_bad_pod_input(kwargs, message):
    with pytest.raises(dt.DialtoneError, match=message):
        dt.dialtone_pod(**kwargs)


def test_answered_no_server():
    out, rc = transcript_output("05_ps_empty.txt")
    diag = dt.diagnose(rc, out, "")
    assert diag["ok"] is True and diag["state"] == "answered"
    assert "no server running yet" in diag["message"]


def test_answered_with_clients():
    out, rc = transcript_output("22_ps_busy.txt")
    diag = dt.diagnose(rc, out, "", pod="mps-dialtone")
    assert diag["ok"] is True
    # The rows of the one ps parser (_mps_output), the same everywhere.
    assert diag["clients"] == [{"pid": 497, "id": 2, "server": 486, "device": "GPU-058fcf08-fc4a-49f5",
                                "namespace": "4026531836", "command": "python3"}]


def test_a_table_the_parser_cannot_read_is_an_error_not_a_dial_tone():
    diag = dt.diagnose(0, "PID ID SERVER\nabc def\n", "")
    assert diag["state"] == "error" and diag["ok"] is False


def test_no_daemon():
    out, rc = transcript_output("00_control_no_daemon.txt")
    diag = dt.diagnose(rc, out, "", pipe_directory="/tmp/nvidia-mps", node="gpulab-worker")
    assert diag["state"] == "no_daemon" and diag["ok"] is False
    assert "gpulab-worker" in diag["message"] and "/tmp/nvidia-mps" in diag["message"]


def test_transport_endpoint_means_the_daemon_died():
    diag = dt.diagnose(1, "", "connect: Transport endpoint is not connected\n")
    assert diag["state"] == "daemon_died"
    assert "died" in diag["message"]


def test_connection_refused_means_permissions_or_namespaces():
    diag = dt.diagnose(1, "", "connect: Connection refused\n")
    assert diag["state"] == "refused"
    assert "permissions or namespaces" in diag["message"]


def test_missing_binary():
    diag = dt.diagnose(127, "", "sh: 1: nvidia-cuda-mps-control: not found\n")
    assert diag["state"] == "no_binary"
    assert "runtimeClassName nvidia" in diag["message"]


def test_answered_by_an_idle_server():
    """A server with no client answers `ps` with nothing, exit 0 (H100, driver 580): still a dial-tone.

    The pod-boundary run on the H100 showed it in every pod case; the diagnosis once called it an error."""
    idle = [(entry["output"], entry["rc"]) for entry in load_transcript("60_cli_exploration.txt")
            if entry["stdin"] == "ps" and entry["output"] == ""]
    assert idle, "transcript 60 records an empty `ps` answer"
    for stdout, rc in idle:
        diag = dt.diagnose(rc, stdout, "", node="gpulab-worker", pod="mps-dialtone")
        assert diag["ok"] is True and diag["state"] == "answered" and diag["clients"] == []
        assert "no client attached" in diag["message"]


def test_empty_output_with_an_error_exit_is_not_a_dial_tone():
    assert dt.diagnose(1, "", "")["ok"] is False


def test_unexpected_answer():
    diag = dt.diagnose(0, "something else\n", "")
    assert diag["state"] == "error" and diag["ok"] is False


def test_host_pod_with_a_resource_leaves_the_devices_to_the_plugin():
    pod = dt.dialtone_pod(resource="nvidia.com/gpu")
    container = pod["spec"]["containers"][0]
    assert container["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    assert all(e["name"] != "NVIDIA_VISIBLE_DEVICES" for e in container["env"])
    assert {"name": "CUDA_MPS_PIPE_DIRECTORY", "value": "/tmp/nvidia-mps"} in container["env"]


def test_the_workload_pod_is_built_like_the_dial_tone_pod():
    config_map, pod = dt.workload_pod({"run.py": "print(1)"}, ["python3", "/opt/gpulab-workloads/run.py"],
                                      node_name="gpulab-worker")
    dialtone = dt.dialtone_pod(node_name="gpulab-worker")
    assert config_map["data"] == {"run.py": "print(1)\n"}
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    # The same way to MPS: the same pipe mount, shm and environment as the dial-tone, plus the files.
    for key in ("hostIPC", "runtimeClassName", "nodeName", "tolerations", "restartPolicy"):
        assert spec[key] == dialtone["spec"][key], key
    assert [v for v in spec["volumes"] if v["name"] != "files"] == dialtone["spec"]["volumes"]
    assert {"name": "files", "mountPath": "/opt/gpulab-workloads", "readOnly": True} in container["volumeMounts"]
    assert {"name": "PYTHONUNBUFFERED", "value": "1"} in container["env"]
    assert spec["activeDeadlineSeconds"] == 420 and spec["terminationGracePeriodSeconds"] == 5


def test_both_pods_take_a_qos_class_env_after_their_own():
    env = [{"name": "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "value": "12"}, {"name": "CUDA_MPS_CLIENT_PRIORITY", "value": "1"}]
    pod = dt.dialtone_pod(env=env)
    names = [e["name"] for e in pod["spec"]["containers"][0]["env"]]
    assert names == ["CUDA_MPS_PIPE_DIRECTORY", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES",
                     "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "CUDA_MPS_CLIENT_PRIORITY"]
    _config_map, workload = dt.workload_pod({"run.py": "print(1)"}, ["python3", "run.py"], env=env)
    assert workload["spec"]["containers"][0]["env"][-3:] == [{"name": "PYTHONUNBUFFERED", "value": "1"}] + env
    assert dt.dialtone_pod()["spec"]["containers"][0]["env"][-1]["name"] == "NVIDIA_DRIVER_CAPABILITIES"


@pytest.mark.parametrize("env, message", [
    ([{"name": "CUDA_MPS_PIPE_DIRECTORY", "value": "/elsewhere"}], "must not set CUDA_MPS_PIPE_DIRECTORY"),
    ([{"name": "A", "value": "1"}, {"name": "A", "value": "2"}], "env sets A twice"),
    ([{"name": "A", "value": 1}], "env entries must be"),
    ([{"name": "1A", "value": "1"}], "env entries must be"),
    (["A=1"], "env entries must be"),
])
def test_a_bad_env_is_refused(env, message):
    with pytest.raises(dt.DialtoneError, match=message):
        dt.dialtone_pod(env=env)
