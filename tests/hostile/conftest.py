# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the hostile replays: throwaway users, their processes, folders like /tmp, a lab (pipe, log and state
directories of root's) with the stand-in daemon, each removed or ended after the test.

test_hostile_user.py keeps its own `intruder`, `shared` and `secret` fixtures (they shadow nothing here)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

import _hostile as h

INTRUDER = "gpulab-hostile"   # any user with a login on the GPU host
VICTIM = "gpulab-victim"      # another user, whose processes are not the intruder's to have ended


def _make_user(name):
    subprocess.run(["userdel", name], capture_output=True, check=False)
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True,
                   capture_output=True)
    entry = pwd.getpwnam(name)
    return {"name": name, "uid": entry.pw_uid, "gid": entry.pw_gid}


def _end_user(user):
    for pid in h.pids_of_uid(user["uid"]):
        h.kill_pid(pid)
    h.wait_until(lambda: not h.pids_of_uid(user["uid"]), 10)
    subprocess.run(["userdel", user["name"]], capture_output=True, check=False)


@pytest.fixture(scope="session")
def users():
    """Two real local users, not root, in no group of root's: the intruder and a victim. Removed after the run."""
    made = {"intruder": _make_user(INTRUDER), "victim": _make_user(VICTIM)}
    yield made
    for user in made.values():
        _end_user(user)


@pytest.fixture
def intruder(users):
    return users["intruder"]


@pytest.fixture
def victim(users):
    return users["victim"]


@pytest.fixture
def procs(users):
    """The test's processes, each ended by its PID afterwards, then whatever the two users still run."""
    registry = h.Processes()
    yield registry
    registry.cleanup()
    for user in users.values():
        for pid in h.pids_of_uid(user["uid"]):
            h.kill_pid(pid)


def _folder(prefix, mode):
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(path, mode)
    return path


@pytest.fixture
def sticky():
    """A folder like /tmp: root's, writable by everyone, sticky."""
    path = _folder("gpulab-hostile-tmp-", 0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def root_dir():
    """A folder of root's (0755) under /tmp, that every user may enter."""
    path = _folder("gpulab-hostile-root-", 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _mps_processes(pipe):
    """PIDs of the processes started for this pipe directory: the daemon and its servers (their environment names
    it)."""
    found = []
    needle = ("CUDA_MPS_PIPE_DIRECTORY=%s" % pipe).encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open("/proc/%s/environ" % entry, "rb") as handle:
                    if needle in handle.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
    return found


@pytest.fixture
def lab(root_dir, procs):
    """Root's pipe, log and state directories (not made yet) under a folder every user may enter. Afterwards the
    daemon of the pipe directory is asked to quit, and the processes left of it (daemon, servers) are ended."""
    lab = {"base": root_dir, "pipe": os.path.join(root_dir, "pipe"), "log": os.path.join(root_dir, "log"),
           "state": os.path.join(root_dir, "state")}
    yield lab
    if os.path.exists(os.path.join(lab["pipe"], "control")):
        try:
            h.control(lab, "quit -t 0")
        except subprocess.TimeoutExpired:
            pass
    deadline = time.time() + 10
    while h.daemon_pid(lab) and h.alive(h.daemon_pid(lab)) and time.time() < deadline:
        time.sleep(0.1)
    for pid in _mps_processes(lab["pipe"]):
        h.kill_pid(pid)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory):
    """The collector's packages (the role's own list) as wheels, for mps_metrics_wheel_directory: pip then installs
    them without the network, quickly. "" (PyPI) when they cannot be fetched."""
    import yaml
    with open(os.path.join(h.ROOT, "roles", "mps_metrics", "vars", "main.yml")) as handle:
        packages = yaml.safe_load(handle)["__mps_metrics_pip_packages"]
    folder = str(tmp_path_factory.mktemp("wheels"))
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
                           "--only-binary=:all:", "--no-deps", "-d", folder] + list(packages),
                          capture_output=True, text=True, timeout=300, check=False)
    return folder if done.returncode == 0 and len(os.listdir(folder)) == len(packages) else ""
