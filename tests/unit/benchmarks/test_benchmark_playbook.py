# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/benchmark.yml end to end without a GPU: gpulab.mps.mps_daemon starts the fake MPS control daemon,
the benchmark runs with simulated clients against it, the daemon is stopped again and the results are fetched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)
from fake_exec import FAKE_MPS_CONTROL as FAKE  # noqa: E402


def test_benchmark_playbook_with_fakes(tmp_path):
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("gpu_hosts:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
                         "      ansible_python_interpreter: %s\n" % sys.executable)
    extra = {
        "benchmark_python": sys.executable,
        "benchmark_control_binary": FAKE,
        "benchmark_args": ["--backend", "sim", "--ns", "1,2", "--workloads", "spin", "--repeats", "1",
                           "--duration", "0.2", "--sim-ms", "2"],
        "benchmark_pipe_directory": str(tmp_path / "pipe"),
        "benchmark_log_directory": str(tmp_path / "log"),
        "benchmark_work_directory": str(tmp_path / "run"),
        "benchmark_fetch_to": str(tmp_path / "fetched"),
    }
    binary = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable)) or shutil.which("ansible-playbook")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    done = subprocess.run([binary, "-i", str(inventory), os.path.join(ROOT, "playbooks", "benchmark.yml"),
                           "-e", json.dumps(extra)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    fetched = tmp_path / "fetched" / "localhost"
    assert {"mps_benchmark.json", "mps_benchmark.md", "mps_benchmark.log"} <= set(os.listdir(str(fetched)))
    result = json.loads((fetched / "mps_benchmark.json").read_text())
    # The daemon the playbook started was used (not one of the script's own), through the collection's client that
    # the playbook shipped for --lib.
    assert result["environment"]["daemon"] == {"pipe_directory": str(tmp_path / "pipe"), "own": False, "pid": None}
    assert result["environment"]["mps_client"] == str(
        tmp_path / "run" / "lib" / "ansible_collections" / "gpulab" / "mps" / "plugins" / "module_utils" / "_mps_control.py")
    assert [(c["mode"], c["ok"]) for c in result["checks"] if c["when"] == "start"] == [("ts", True), ("mps", True)]
    # ... and stopped again: no pid file left in its pipe directory.
    assert not (tmp_path / "pipe" / "nvidia-cuda-mps-control.pid").exists()
    assert "Results in %s/localhost/" % (tmp_path / "fetched") in done.stdout


def test_the_qos_kind_measures_the_classes_the_host_has(tmp_path):
    """benchmark_kind qos: the noisy-neighbour benchmark against the playbook's daemon, with the class files of
    benchmark_qos_directory (written here as mps_qos_files writes them, as site.yml does)."""
    from test_qos_benchmark import write_classes
    from ansible_collections.gpulab.mps.plugins.module_utils import _qos
    write_classes(tmp_path / "qos", _qos.DEFAULT_CLASSES)
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("gpu_hosts:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
                         "      ansible_python_interpreter: %s\n" % sys.executable)
    extra = {
        "benchmark_kind": "qos",
        "benchmark_python": sys.executable,
        "benchmark_control_binary": FAKE,
        "benchmark_qos_directory": str(tmp_path / "qos"),
        "benchmark_args": ["--backend", "sim", "--ns", "0,2", "--modes", "ts,qos", "--repeats", "1", "--duration",
                           "0.3", "--sim-latency-ms", "1", "--sim-fill-ms", "3", "--criterion", "0"],
        "benchmark_pipe_directory": str(tmp_path / "pipe"),
        "benchmark_log_directory": str(tmp_path / "log"),
        "benchmark_work_directory": str(tmp_path / "run"),
        "benchmark_fetch_to": str(tmp_path / "fetched"),
    }
    binary = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable)) or shutil.which("ansible-playbook")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    done = subprocess.run([binary, "-i", str(inventory), os.path.join(ROOT, "playbooks", "benchmark.yml"),
                           "-e", json.dumps(extra)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    fetched = tmp_path / "fetched" / "localhost"
    assert {"mps_qos.json", "mps_qos.md", "mps_qos.log"} <= set(os.listdir(str(fetched)))
    result = json.loads((fetched / "mps_qos.json").read_text())
    assert result["environment"]["daemon"] == {"pipe_directory": str(tmp_path / "pipe"), "own": False, "pid": None}
    assert result["environment"]["mps_client"].startswith(str(tmp_path / "run" / "lib" / "ansible_collections"))
    assert result["classes"]["batch"]["path"] == str(tmp_path / "qos" / "batch.env")
    assert [(c["mode"], c["ok"]) for c in result["checks"] if c["when"] == "start"] == [("ts", True), ("qos", True)]
    neighbours = [e for e in result["evidence"] if e["mode"] == "qos" and e["role"] != "latency"]
    assert [e["mps_env"]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] for e in neighbours] == ["12", "12"]
    assert not (tmp_path / "pipe" / "nvidia-cuda-mps-control.pid").exists()
