# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a module of the collection as Ansible runs it on a target: `python MODULE.py ARGS_FILE`, with the real
run_command, the NVML stand-in of tests/standins (the recorded H100) first on the path, and the stand-in
control binary wrapped as an executable. For the tests that play real processes and files against the modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
STANDINS = os.path.join(ROOT, "tests", "standins")
sys.path.insert(0, os.path.join(ROOT, "tests", "unit", "benchmarks"))
from fake_exec import executable  # noqa: E402

CONTROL = executable(os.path.join(STANDINS, "nvidia-cuda-mps-control"), "nvidia-cuda-mps-control-standin")


def launch(name, args, check=False, folder=None):
    """Start module `name` with `args`; returns the Popen (the arguments file goes in `folder`)."""
    folder = folder or os.path.join(HERE, "..", "output")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "%s-%d.json" % (name, time.monotonic_ns()))
    with open(path, "w") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check)}, handle)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, ".collections"), STANDINS]))
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "plugins", "modules", name + ".py"), path], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result_of(proc, timeout=120):
    """The module's JSON result; a traceback anywhere is a failure of the test."""
    out, err = proc.communicate(timeout=timeout)
    assert "Traceback" not in out + err, out + err
    return json.loads(out.strip().splitlines()[-1])


def run(name, args, check=False, folder=None, timeout=120):
    return result_of(launch(name, args, check, folder), timeout)


def control(pipe_directory, log_directory, command, binary=CONTROL):
    """`echo COMMAND | nvidia-cuda-mps-control` as a user types it, for this pipe directory."""
    env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=pipe_directory, CUDA_MPS_LOG_DIRECTORY=log_directory)
    return subprocess.run([binary], input=command + "\n", text=True, capture_output=True, env=env, timeout=30,
                          check=False).stdout
