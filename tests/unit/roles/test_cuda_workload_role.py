# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""roles/cuda_workload through ansible-playbook, without a GPU.

Host variant: the real role against a fake nvcc (fakes/fake_nvcc.py builds a stand-in kernel_pair speaking the
workload protocol), a fake python3 with "PyTorch" (fakes/fake_gpu.py: the matmul worker on a simulated GPU) and the
fake MPS control daemon, spoken to through the collection's client: it ships the files and the client, builds the
kernel pair, does the seeds' experiment (each group alone and at once, time-slicing and MPS), proves membership both
ways, prints the table last and writes it on the controller, and a second run changes nothing. Clients that silently
run without MPS must fail the role with that finding.
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
FAKE_GPU_PYTHON = executable(os.path.join(HERE, "fakes", "fake_gpu.py"), "python3")
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
            "cuda_workload_timeout": 60,
            "cuda_workload_kernel_pair_iterations": 3,
            "cuda_workload_results_directory": str(tmp_path / "results"),
        }
        yield extra


def table_of(output):
    """The rows of the table the play printed last (the debug task's block), as lists of cells."""
    block = output[output.rindex("What MPS bought on this host"):]
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in block.splitlines() if line.strip().startswith("| ") and "---" not in line]


def test_host_variant_builds_runs_proves_and_is_idempotent(lab, tmp_path):
    first = playbook("host", lab)
    assert first.returncode == 0, first.stdout[-4000:]
    assert recap(first.stdout)["changed"] >= 3  # files and client copied, kernel pair built
    for name in ("run_workloads.py", "gpulab_collection.py", "matmul_worker.py", "kernel_pair.py", "kernel_pair.cu",
                 "kernel_pair_kernels.cuh"):
        with open(os.path.join(FILES, name)) as want, open(str(tmp_path / "workloads" / name)) as got:
            assert got.read() == want.read()
    # The collection's client beside them, which the runner imports (--lib).
    client = tmp_path / "workloads" / "lib" / "ansible_collections" / "gpulab" / "mps" / "plugins" / "module_utils"
    assert sorted(os.listdir(str(client))) == ["_command.py", "_mps_control.py", "_mps_health.py", "_mps_output.py",
                                               "_sizes.py", "_trust.py"]
    assert os.access(str(tmp_path / "workloads" / "kernel_pair"), os.X_OK)
    # The table, printed last, readable as it is: each run proven, the ratio in words on the MPS rows.
    rows = table_of(first.stdout)
    assert rows[0] == ["workload", "run", "proven by get_client_list", "seconds per worker", "aggregate",
                       "MPS / time-slicing"]
    assert [row[:3] for row in rows[1:]] == [
        ["kernel pair add + scale, 4 blocks each (seed 003)", "1 alone, time-slicing", "not an MPS client"],
        ["", "1 alone, MPS", "an MPS client"],
        ["", "2 at once, time-slicing", "0 of 2 MPS clients"],
        ["", "2 at once, MPS", "2 of 2 MPS clients"]]
    assert all(re.match(r"^[0-9.]+ kernels/s$", row[4]) for row in rows[1:])
    assert [bool(re.match(r"^x[0-9.]+: ", row[5])) for row in rows[1:]] == [False, True, False, True]
    tail = first.stdout[first.stdout.rindex("What MPS bought on this host"):]
    assert "The daemon's defaults: 100 % of the SMs per client, no pinned memory limit." in tail
    # ... and written on the controller, as markdown and JSON.
    results = tmp_path / "results" / "localhost"
    assert "Written to %s/seed_experiment.md and .json." % results in tail
    report = json.loads((results / "seed_experiment.json").read_text())
    assert report["schema"] == "gpulab.mps/seed-experiment/1" and report["ok"]
    assert report["table_text"] in (results / "seed_experiment.md").read_text()
    second = playbook("host", lab)
    assert second.returncode == 0, second.stdout[-4000:]
    assert recap(second.stdout) == dict(recap(second.stdout), changed=0, failed=0)


def test_the_lab_table_holds_both_seeds(lab, tmp_path):
    """With a Python that has "PyTorch" (the simulated GPU), the matmul workers of seed 002 join the kernel pair:
    the experiment's eight runs, one table."""
    done = playbook("host", dict(lab, cuda_workload_python=FAKE_GPU_PYTHON, cuda_workload_matmul_enabled=True,
                                 cuda_workload_matmul_iterations=3))
    assert done.returncode == 0, done.stdout[-4000:]
    rows = table_of(done.stdout)[1:]
    assert [row[0] for row in rows] == ["matmul 4096x4096 float32, 3 iterations (seed 002)", "", "", "",
                                        "kernel pair add + scale, 4 blocks each (seed 003)", "", "", ""]
    assert [row[1] for row in rows] == ["1 alone, time-slicing", "1 alone, MPS", "2 at once, time-slicing",
                                        "2 at once, MPS"] * 2
    assert all(row[4].endswith(" TFLOP/s") for row in rows[:4])
    report = json.loads((tmp_path / "results" / "localhost" / "seed_experiment.json").read_text())
    assert [w["result"]["implementation"] for r in report["runs"] for w in r["workloads"]][:3] == ["simulated"] * 3


def test_a_host_job_runs_in_a_qos_class_of_its_own(lab, tmp_path):
    """cuda_workload_host_qos_class (docs/qos.md, "A host job beside pods", its example class): every worker gets the
    class's environment from the plan (what its env file holds), and says so itself; the table says which class."""
    classes = {"latency": {"client_priority": 0},
               "host-batch": {"active_thread_percentage": 10, "client_priority": 1, "pinned_memory_limit": "4G",
                              "description": "jobs started on the GPU host beside the cluster's pods"}}
    done = playbook("host", dict(lab, cuda_workload_host_qos_class="host-batch", gpulab_mps_qos_classes=classes,
                                 cuda_workload_modes=["mps"]))
    assert done.returncode == 0, done.stdout[-4000:]
    report = json.loads((tmp_path / "results" / "localhost" / "seed_experiment.json").read_text())
    seen = [w["result"]["mps_env"] for r in report["runs"] for w in r["workloads"]]
    assert len(seen) == 3 and all(env == {
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "10", "CUDA_MPS_CLIENT_PRIORITY": "1",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=4G", "CUDA_MPS_PIPE_DIRECTORY": lab["mps_host_pipe_directory"]}
        for env in seen)
    assert ("The workers ran in QoS class host-batch: CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=10 CUDA_MPS_CLIENT_PRIORITY=1 "
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=4G.") in done.stdout
    # An unknown class fails before anything runs, naming the known ones.
    done = playbook("host", dict(lab, cuda_workload_host_qos_class="gold", gpulab_mps_qos_classes=classes))
    assert done.returncode != 0
    assert "no QoS class 'gold' in this host's plan: it has host-batch, latency" in done.stdout


def test_host_variant_fails_on_clients_without_mps(lab):
    done = playbook("host", dict(lab, cuda_workload_modes=["mps"]), env={"GPULAB_SIM_NO_MPS": "1"})
    assert done.returncode != 0
    assert ("The seeds' experiment failed on localhost: kernel_pair, 1 alone, mps: add ran WITHOUT MPS: in no "
            "get_client_list of the daemon in") in " ".join(done.stdout.split())


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
    ({"cuda_workload_modes": []}, "modes a non-empty list of no-mps, mps (got [])"),  # the role's own check
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


MODULE_UTILS = os.path.join(ROOT, "plugins", "module_utils")
CLIENT_PATH = "ansible_collections/gpulab/mps/plugins/module_utils"


def pod_files(objects):
    """{path under the files' mount: content}: the ConfigMap as the pod sees it (each key at its item's path)."""
    config_map, pod = objects
    volume = [v for v in pod["spec"]["volumes"] if v["name"] == "files"][0]["configMap"]
    assert volume["name"] == config_map["metadata"]["name"]
    assert sorted(i["key"] for i in volume["items"]) == sorted(config_map["data"])  # every key is mounted
    return dict((i["path"], config_map["data"][i["key"]]) for i in volume["items"])


@pytest.mark.parametrize("case", ["host", "plugin"])
def test_pod_carries_the_role_files_and_the_collection_client_unchanged(pods, case):
    files = pod_files(pods[case])
    for name in ("run_workloads.py", "gpulab_collection.py", "matmul_worker.py", "kernel_pair.py", "kernel_pair.cu",
                 "kernel_pair_kernels.cuh"):
        with open(os.path.join(FILES, name)) as handle:
            assert files[name] == handle.read().rstrip("\n") + "\n", name
    for name in ("_mps_control.py", "_mps_output.py", "_command.py", "_trust.py"):
        with open(os.path.join(MODULE_UTILS, name)) as handle:
            assert files["%s/%s" % (CLIENT_PATH, name)] == handle.read().rstrip("\n") + "\n", name


def test_the_pod_files_run_as_mounted(pods, tmp_path):
    """The ConfigMap's files, laid out as the pod mounts them, are a runner that imports the collection's client from
    --lib (the mount) and nothing else: no checkout, no PYTHONPATH."""
    mount = tmp_path / "opt-gpulab-workloads"
    for path, content in pod_files(pods["host"]).items():
        os.makedirs(os.path.dirname(str(mount / path)), exist_ok=True)
        (mount / path).write_text(content)
    code = "import run_workloads as r, os; print(os.path.realpath(r.MpsControl.__init__.__code__.co_filename))"
    env = dict((k, v) for k, v in os.environ.items() if k != "PYTHONPATH")
    done = subprocess.run([sys.executable, "-S", "-c", code, "--lib", str(mount)], cwd=str(mount), env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(mount / CLIENT_PATH / "_mps_control.py")


def test_the_module_utils_shipped_are_the_import_closure_of_the_client():
    """vars/main.yml lists what the runner imports from the collection: _mps_control.py and what it imports, and so
    on. One missing would fail on a host or in a pod only."""
    import ast
    import yaml
    with open(os.path.join(ROOT, "roles", "cuda_workload", "vars", "main.yml")) as handle:
        listed = yaml.safe_load(handle)["__cuda_workload_module_utils"]
    needed, todo = set(), ["_mps_control.py"]
    with open(os.path.join(FILES, "run_workloads.py")) as handle:
        for node in ast.walk(ast.parse(handle.read())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ansible_collections.gpulab"):
                todo.append((node.module.rsplit(".", 1)[-1] if not node.module.endswith("module_utils") else
                             node.names[0].name) + ".py")
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        with open(os.path.join(MODULE_UTILS, name)) as handle:
            for node in ast.walk(ast.parse(handle.read())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                        "ansible_collections.gpulab.mps.plugins.module_utils"):
                    if node.module.endswith("module_utils"):
                        todo.extend(a.name + ".py" for a in node.names)
                    else:
                        todo.append(node.module.rsplit(".", 1)[-1] + ".py")
    assert sorted(listed) == sorted(needed)


def test_pod_host_source_mounts_the_pipe_and_runs_the_runner(pods):
    pod = pods["host"][1]
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    command = container["command"]
    assert command[:10] == ["python3", "/opt/gpulab-workloads/run_workloads.py", "--lib", "/opt/gpulab-workloads",
                            "--mode", "mps", "--timeout", "300", "--pipe-dir", "/tmp/nvidia-mps"]
    assert command[10:] == [
        "--workload=matmul/matmul-0=python3 /opt/gpulab-workloads/matmul_worker.py --size 4096 --iterations 10 "
        "--device 0 --handshake",
        "--workload=matmul/matmul-1=python3 /opt/gpulab-workloads/matmul_worker.py --size 4096 --iterations 10 "
        "--device 0 --handshake",
        "--workload=kernel_pair/add=python3 /opt/gpulab-workloads/kernel_pair.py --kernel add --n 16777216 --blocks 4 "
        "--iterations 10 --device 0 --handshake",
        "--workload=kernel_pair/scale=python3 /opt/gpulab-workloads/kernel_pair.py --kernel scale --n 16777216 "
        "--blocks 4 --iterations 10 --device 0 --handshake",
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
