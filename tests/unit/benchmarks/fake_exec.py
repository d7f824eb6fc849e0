# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Executable stand-ins for the fake NVIDIA tools of these tests.

The fakes are Python files without a shebang (the sanity shebang test accepts only `python`, which not every
host has); the code under test runs them as programs, so each gets a small shell wrapper that calls it with the
Python running the tests. Wrappers live in a temporary folder removed at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

_FOLDER = tempfile.mkdtemp(prefix="gpulab-fake-tools-")
atexit.register(shutil.rmtree, _FOLDER, True)


def executable(script, name):
    """Path of an executable `name` that runs `script` with this Python, passing its arguments on."""
    path = os.path.join(_FOLDER, name)
    with open(path, "w") as handle:
        handle.write('#!/bin/sh\nexec %s %s "$@"\n' % (shlex.quote(sys.executable), shlex.quote(script)))
    os.chmod(path, 0o755)
    return path


HERE = os.path.dirname(os.path.abspath(__file__))
FAKE_MPS_CONTROL = executable(os.path.join(HERE, "fake_mps_control.py"), "nvidia-cuda-mps-control")


@contextlib.contextmanager
def fake_mps_daemon(folder):
    """A running fake MPS control daemon with its pipe and log directories under `folder`: yields the pipe
    directory, and quits the daemon afterwards."""
    pipe, log = os.path.join(str(folder), "pipe"), os.path.join(str(folder), "log")
    os.makedirs(pipe)
    os.makedirs(log)
    env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=pipe, CUDA_MPS_LOG_DIRECTORY=log)
    subprocess.run([FAKE_MPS_CONTROL, "-d"], env=env, check=True, timeout=10)
    deadline = time.time() + 10
    while not os.path.exists(os.path.join(pipe, "nvidia-cuda-mps-control.pid")) and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield pipe
    finally:
        subprocess.run([FAKE_MPS_CONTROL], input="quit\n", text=True, env=env, timeout=10, check=False)
