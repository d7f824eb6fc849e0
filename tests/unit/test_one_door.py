# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One fact, one place; one door to MPS (docs/design.md). A tripwire over the tree: it fails where a second piece of
code derives a planned fact again, or speaks to the MPS CLI beside the one client.

- The plan's inputs (the settings listed in PLAN_INPUTS) are read by the preflight role only; every other role and
  playbook reads the plan (preflight_mps_plan).
- Only _mps_control.py runs the control binary; only _mps_control.find_control_binary looks for it (the list of
  NVIDIA's places, BINARY_DIRECTORIES, is used there and by mps_plan/_plan, which pass it on). The collection's code
  is plugins/, roles/, playbooks/ and benchmarks/; the GPU instruments under tests/gpu that record what the raw CLI
  prints (explore_cli.sh, mps_fault_experiment.py, hostile_output_probe.sh) speak to it directly on purpose.
- Only _command.py starts external commands for the collection's code (subprocess), besides the interactive CUDA
  client of the probe (_cuda_client.py).
- The replica arithmetic (memory // replicas, 100 // replicas) lives in _device_plugin.py and nowhere else.
Each rule's exceptions are named below, with the reason.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Settings that go into the plan: read by roles/preflight (and the inventories, docs and tests that set them).
PLAN_INPUTS = (
    "mps_host_pipe_directory", "mps_host_log_directory", "mps_host_state_directory", "mps_host_visible_devices",
    "mps_host_default_active_thread_percentage", "mps_host_default_pinned_memory_limit", "mps_host_replica_limits",
    "mps_host_service_manager", "mps_host_multiuser_server", "mps_host_service_name", "device_plugin_mode",
    "device_plugin_replicas", "device_plugin_replicas_per_gpu", "device_plugin_name_pattern", "gpulab_device_plugin",
    "gpulab_mps_owner", "gpulab_kubernetes", "kind_cluster_target", "gpulab_mps_qos_classes",
    "gpulab_mps_qos_directory",
)
# Where they may be read: the role that makes the plan; the teardown play sets mps_host_state for it.
PLAN_INPUT_READERS = ("roles/preflight/tasks/", "roles/preflight/vars/")


def tracked(*prefixes, suffixes=(".yml", ".yaml", ".j2", ".py", ".sh")):
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"] + list(prefixes),
                         cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
    return sorted(p for p in out.decode().split("\0") if p.endswith(suffixes) and os.path.isfile(os.path.join(ROOT, p)))


# Files that only document (argument specs, the filters' docs): what they say is not what runs.
DOCS = re.compile(r"(^|/)meta/argument_specs\.yml$|^plugins/filter/[^/]+\.yml$")


def code_lines(path):
    """(number, line) of a file that runs, without comment lines and Python docstrings (what runs, not what is
    said)."""
    if DOCS.search(path):
        return
    with open(os.path.join(ROOT, path), encoding="utf-8", errors="replace") as handle:
        in_docstring = False
        for number, line in enumerate(handle, 1):
            stripped = line.strip()
            if path.endswith(".py") and stripped.count('"""') % 2 == 1:
                in_docstring = not in_docstring
                continue
            if path.endswith(".py") and stripped.startswith('"""'):
                continue  # a docstring of one line
            if in_docstring or stripped.startswith("#"):
                continue
            yield number, line


def offenders(paths, pattern, allowed=()):
    found = []
    for path in paths:
        if path.startswith(tuple(allowed)):
            continue
        for number, line in code_lines(path):
            if pattern.search(line):
                found.append("%s:%d: %s" % (path, number, line.strip()[:160]))
    return found


def expressions(path):
    """The Jinja expressions and `when` conditions of a YAML file: where a variable is read."""
    with open(os.path.join(ROOT, path), encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    text = re.sub(r"(?m)^\s*#.*$", "", text)
    found = re.findall(r"\{\{.*?\}\}|\{%.*?%\}", text, re.S)
    found += re.findall(r"(?m)^\s*(?:when|that|until|failed_when|changed_when):.*(?:\n\s+- .*)*", text)
    return found


@pytest.mark.parametrize("setting", PLAN_INPUTS)
def test_a_plan_input_is_read_only_by_the_role_that_makes_the_plan(setting):
    pattern = re.compile(r"\b%s\b" % setting)
    readers = []
    for path in tracked("roles", "playbooks", "site.yml", suffixes=(".yml", ".j2")):
        if path.startswith(PLAN_INPUT_READERS) or "/meta/argument_specs.yml" in path:
            continue
        if any(pattern.search(expression) for expression in expressions(path)):
            readers.append(path)
    assert not readers, "%s is read outside preflight (read preflight_mps_plan instead): %s" % (setting, readers)


def test_only_the_client_runs_the_control_binary():
    """No product code spawns nvidia-cuda-mps-control but _mps_control (tests/ may, to play a user or a daemon)."""
    code = tracked("plugins", "roles", "playbooks", "benchmarks", "site.yml")
    pattern = re.compile(r"(Popen|subprocess\.run|check_output|os\.exec\w*)\(\[?[^)]*(binary|control|CONTROL_BINARY)"
                         r"|\|\s*\{\{[^}]*control_binary|echo [a-z_ ]+\|\s*nvidia-cuda-mps-control")
    found = offenders(code, pattern, allowed=("plugins/module_utils/_mps_control.py", "plugins/module_utils/_command.py",
                                              # the seed's dial-tone IS `echo ps | nvidia-cuda-mps-control`, in a pod
                                              "plugins/module_utils/_pods.py", "roles/mps_dialtone/tasks/pod.yml"))
    assert not found, "the MPS CLI is run outside _mps_control.MpsControl:\n" + "\n".join(found)


def test_the_binary_is_looked_for_in_one_place():
    code = tracked("plugins", "roles", "playbooks", "benchmarks")
    pattern = re.compile(r"BINARY_DIRECTORIES|shutil\.which\([^)]*(CONTROL_BINARY|mps-control)|"
                         r"def find_control_binary")
    found = offenders(code, pattern, allowed=("plugins/module_utils/_mps_output.py",
                                              "plugins/module_utils/_mps_control.py",
                                              # mps_plan's option binary_directories defaults to the same list
                                              "plugins/modules/mps_plan.py", "plugins/module_utils/_plan.py"))
    assert not found, "the control binary is looked for outside _mps_control.find_control_binary:\n" + "\n".join(found)


def test_commands_start_in_one_runner():
    code = tracked("plugins", suffixes=(".py",))
    pattern = re.compile(r"\bsubprocess\.(Popen|run|call|check_output|check_call)\b|\brun_command\(")
    found = offenders(code, pattern, allowed=("plugins/module_utils/_command.py",
                                              # the probe's CUDA client: an interactive child (report, then release)
                                              "plugins/module_utils/_cuda_client.py"))
    assert not found, "an external command outside _command.run_bounded:\n" + "\n".join(found)


def test_the_replica_arithmetic_lives_in_the_device_plugin_plan():
    code = tracked("plugins", "roles", "playbooks", "benchmarks", suffixes=(".py", ".yml", ".j2"))
    pattern = re.compile(r"(memory_total_mib|total_mib|memory_total_bytes)\s*//|100\s*//\s*\w*replicas")
    found = offenders(code, pattern, allowed=("plugins/module_utils/_device_plugin.py",
                                              "plugins/module_utils/_sizes.py"))
    assert not found, "a replica share is computed outside _device_plugin.plan:\n" + "\n".join(found)
