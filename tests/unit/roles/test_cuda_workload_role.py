# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""roles/cuda_workload through ansible-playbook, without a GPU.

Host variant: the real role against a fake nvcc (fakes/fake_nvcc.py builds a stand-in kernel_pair speaking the
workload protocol) and the fake MPS control daemon: it ships the files, builds the kernel pair, runs it with MPS
off and on, proves membership both ways, and a second run changes nothing. A daemon whose `ps` lists nobody
(clients that silently run without MPS) must fail the role with that finding.
Pod variant: the ConfigMap and Pod the role would apply, validated against Kubernetes 1.33 (strict).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import kubernetes_validate
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
FILES = os.path.join(ROOT, "roles", "cuda_workload", "files")
sys.path.insert(0, os.path.join(ROOT, "tests", "unit", "benchmarks"))
from fake_exec import FAKE_MPS_CONTROL as FAKE_CONTROL, executable, fake_mps_daemon  # noqa: E402

FAKE_NVCC = executable(os.path.join(HERE, "fakes", "fake_nvcc.py"), "nvcc")
STANDINS = os.path.join(ROOT, "tests", "standins")
KUBERNETES_VERSION = "1.33"


def playbook(tags, extra, env=None, check=False):
    binary = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable)) or shutil.which("ansible-playbook")
    argv = [binary, "-i", "localhost,", os.path.join(HERE, "cuda_workload.yml"), "--tags", tags,
            "-e", json.dumps(extra)]
    if check:
        argv.append("--check")
    # The preflight role plans the host through NVML: here the stand-in of tests/standins (the recorded H100).
    full_env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                    ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", PYTHONPATH=STANDINS)
    full_env.update(env or {})
    return subprocess.run(argv, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300, check=False)


def recap(output):
    match = re.search(r"localhost\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", output)
    assert match, output[-3000:]
    return dict(zip(("ok", "changed", "unreachable", "failed"), (int(g) for g in match.groups())))


@pytest.fixture
def lab(tmp_path):
    """A fake MPS daemon and the variables that point the role at the fakes."""
    with fake_mps_daemon(tmp_path) as pipe:
        extra = {
            "cuda_workload_directory": str(tmp_path / "workloads"),
            "cuda_workload_python": sys.executable,  # no PyTorch or CuPy here: the kernel pair needs nvcc then
            "cuda_workload_matmul_enabled": False,
            "cuda_workload_nvcc": FAKE_NVCC,
            "mps_host_pipe_directory": pipe,
            "preflight_control_binary": FAKE_CONTROL,
            "cuda_workload_modes": ["no-mps", "mps"],
            "cuda_workload_timeout": 60,
        }
        yield extra


def test_host_variant_builds_runs_proves_and_is_idempotent(lab, tmp_path):
    first = playbook("host", lab)
    assert first.returncode == 0, first.stdout[-4000:]
    assert recap(first.stdout)["changed"] >= 2  # files copied, kernel pair built
    for name in ("run_workloads.py", "matmul_worker.py", "kernel_pair.py", "kernel_pair.cu", "kernel_pair_kernels.cuh"):
        with open(os.path.join(FILES, name)) as want, open(str(tmp_path / "workloads" / name)) as got:
            assert got.read() == want.read()
    assert os.access(str(tmp_path / "workloads" / "kernel_pair"), os.X_OK)
    out = " ".join(first.stdout.split())
    assert re.search(r"no-mps add: pid \d+ not an MPS client \(absent from ps\); median 0\.5 ms over 3 iterations "
                     r"\(cuda-c\); check ok", out), out[-3000:]
    assert re.search(r"mps scale: pid (\d+) an MPS client \(pid \1 in ps \(server \d+\)\); median 0\.5 ms", out)
    second = playbook("host", lab)
    assert second.returncode == 0, second.stdout[-4000:]
    assert recap(second.stdout) == dict(recap(second.stdout), changed=0, failed=0)


def test_host_variant_fails_on_clients_without_mps(lab):
    done = playbook("host", dict(lab, cuda_workload_modes=["mps"]), env={"FAKE_MPS_HIDE": "1"})
    assert done.returncode != 0
    assert "kernel_pair (mps) failed on localhost: add, scale ran WITHOUT MPS: not in `ps` of the daemon in" in \
        " ".join(done.stdout.split())


def test_host_variant_falls_back_when_nvcc_fails(lab):
    """A failed build is reported, and the CuPy/PyTorch version runs instead (here it cannot: no library), so the
    role says that neither a library nor a working build is there."""
    done = playbook("host", lab, env={"FAKE_NVCC_FAIL": "1"})
    text = " ".join(done.stdout.split())
    assert "could not build kernel_pair.cu, so the kernel pair runs through CuPy/PyTorch instead" in text
    assert "simulated compile failure" in text
    assert done.returncode != 0
    assert "neither CuPy nor PyTorch can run the kernels here" in text


def test_host_variant_needs_a_library_for_matmul(lab):
    done = playbook("host", dict(lab, cuda_workload_matmul_enabled=True))
    assert done.returncode != 0
    assert "has neither PyTorch nor CuPy. The matmul worker needs one of them" in " ".join(done.stdout.split())


def test_host_variant_auto_finds_the_python_with_a_library(lab, tmp_path):
    """cuda_workload_python auto skips the first python3 on PATH (as under `make lab`: the lab's venv, with neither
    library) and takes the next one that has PyTorch or CuPy."""
    venv_bin, gpu_bin = tmp_path / "venv-bin", tmp_path / "gpu-bin"
    venv_bin.mkdir()
    gpu_bin.mkdir()
    os.symlink(sys.executable, str(venv_bin / "python3"))
    marker = tmp_path / "gpu-python-ran"
    # A python3 that says it has CuPy when probed, and otherwise is this Python (and leaves a mark).
    (gpu_bin / "python3").write_text(
        "#!/bin/bash\n"
        "if [ \"$1\" = -c ] && [[ \"$2\" == *find_spec* ]]; then echo cupy; exit 0; fi\n"
        "touch %s\nexec %s \"$@\"\n" % (marker, sys.executable))
    os.chmod(str(gpu_bin / "python3"), 0o755)
    path = "%s:%s:%s" % (venv_bin, gpu_bin, os.environ["PATH"])
    done = playbook("host", dict(lab, cuda_workload_python="auto", cuda_workload_python_candidates=[]), env={"PATH": path})
    assert done.returncode == 0, done.stdout[-4000:]
    assert marker.exists(), "the workloads did not run with the python3 that has a library"


def test_host_variant_auto_without_any_library_says_where_it_looked(lab, tmp_path):
    venv_bin = tmp_path / "venv-bin"
    venv_bin.mkdir()
    os.symlink(sys.executable, str(venv_bin / "python3"))
    path = "%s:/usr/bin:/bin" % venv_bin
    done = playbook("host", dict(lab, cuda_workload_python="auto", cuda_workload_python_candidates=[],
                                 cuda_workload_matmul_enabled=True), env={"PATH": path})
    assert done.returncode != 0
    assert "nor does any other python3 on PATH or in cuda_workload_python_candidates" in " ".join(done.stdout.split())


def test_host_variant_check_mode_changes_nothing(lab, tmp_path):
    done = playbook("host", lab, check=True)
    assert done.returncode == 0, done.stdout[-4000:]
    assert not (tmp_path / "workloads").exists()


@pytest.mark.parametrize("override, message", [
    ({"cuda_workload_modes": ["mps", "sometimes"]}, "sometimes"),  # the argument spec
    ({"cuda_workload_modes": []}, "modes a non-empty list of mps, no-mps (got [])"),  # the role's own check
])
def test_bad_settings_are_refused(lab, override, message):
    done = playbook("host", dict(lab, **override))
    assert done.returncode != 0
    text = " ".join(done.stdout.split())
    assert message in text and "cuda_workload" in text, text[-2000:]


@pytest.fixture(scope="module")
def pods(tmp_path_factory):
    out = tmp_path_factory.mktemp("pods")
    cases = {
        # Without a device plugin, the pod asks the runtime for every GPU; the plugin owner hands out replicas.
        "host": {"gpulab_mps_owner": "host", "mps_host_pipe_directory": "/tmp/nvidia-mps", "gpulab_device_plugin": False},
        "plugin": {"gpulab_mps_owner": "plugin", "cuda_workload_pod_node": "lab-worker",
                   "cuda_workload_pod_host_ipc": True},
        # The workloads in the batch class of the plan, with a pinned limit of their own.
        "qos": {"gpulab_mps_owner": "plugin", "cuda_workload_pod_qos_class": "batch", "gpulab_mps_qos_classes": {
            "batch": {"active_thread_percentage": 20, "client_priority": 1, "pinned_memory_limit": "8G"}}},
    }
    rendered = {}
    for name, extra in cases.items():
        path = str(out / ("%s.json" % name))
        done = playbook("pod", dict(extra, render_out=path, preflight_control_binary=FAKE_CONTROL))
        assert done.returncode == 0, done.stdout[-4000:]
        with open(path) as handle:
            rendered[name] = json.load(handle)
    return rendered


@pytest.mark.parametrize("case", ["host", "plugin", "qos"])
def test_pod_objects_are_valid_kubernetes(pods, case):
    objects = pods[case]
    assert [o["kind"] for o in objects] == ["ConfigMap", "Pod"]
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("case", ["host", "plugin"])
def test_pod_carries_the_role_files_unchanged(pods, case):
    config_map = pods[case][0]
    for name in ("run_workloads.py", "matmul_worker.py", "kernel_pair.py", "kernel_pair.cu", "kernel_pair_kernels.cuh"):
        with open(os.path.join(FILES, name)) as handle:
            assert config_map["data"][name] == handle.read().rstrip("\n") + "\n", name


def test_pod_host_source_mounts_the_pipe_and_runs_the_runner(pods):
    pod = pods["host"][1]
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    command = container["command"]
    assert command[:8] == ["python3", "/opt/gpulab-workloads/run_workloads.py", "--mode", "mps", "--timeout", "300",
                           "--pipe-dir", "/tmp/nvidia-mps"]
    assert command[8:] == [
        "--workload=matmul-0=python3 /opt/gpulab-workloads/matmul_worker.py --size 4096 --iterations 10 --device 0 "
        "--handshake",
        "--workload=matmul-1=python3 /opt/gpulab-workloads/matmul_worker.py --size 4096 --iterations 10 --device 0 "
        "--handshake",
        "--workload=add=python3 /opt/gpulab-workloads/kernel_pair.py --kernel add --n 16777216 --blocks 4 "
        "--iterations 10 --device 0 --handshake",
        "--workload=scale=python3 /opt/gpulab-workloads/kernel_pair.py --kernel scale --n 16777216 --blocks 4 "
        "--iterations 10 --device 0 --handshake",
    ]
    env = dict((e["name"], e["value"]) for e in container["env"])
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == "/tmp/nvidia-mps" and env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert {"name": "mps-pipe", "hostPath": {"path": "/tmp/nvidia-mps", "type": "Directory"}} in spec["volumes"]
    assert {"name": "mps-pipe", "mountPath": "/tmp/nvidia-mps"} in container["volumeMounts"]
    assert spec["hostIPC"] is False and spec["restartPolicy"] == "Never"
    assert spec["activeDeadlineSeconds"] == 420 and spec["runtimeClassName"] == "nvidia"
    assert "resources" not in container and "nodeName" not in spec


def test_pod_plugin_source_asks_for_a_replica(pods):
    pod = pods["plugin"][1]
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    assert "--pipe-dir" not in container["command"]  # the plugin sets CUDA_MPS_PIPE_DIRECTORY
    assert container["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    assert not [v for v in spec["volumes"] if v["name"] == "mps-pipe"]
    assert "CUDA_MPS_PIPE_DIRECTORY" not in [e["name"] for e in container["env"]]
    assert spec["hostIPC"] is True and spec["nodeName"] == "lab-worker"


def test_pod_in_a_qos_class_gets_the_class_env(pods):
    container = pods["qos"][1]["spec"]["containers"][0]
    env = dict((e["name"], e["value"]) for e in container["env"])
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "20" and env["CUDA_MPS_CLIENT_PRIORITY"] == "1"
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=8G"
    assert "CUDA_MPS_PIPE_DIRECTORY" not in env  # the device plugin sets it
    assert not any(e["name"].startswith("CUDA_MPS_ACTIVE") for e in pods["host"][1]["spec"]["containers"][0]["env"])
