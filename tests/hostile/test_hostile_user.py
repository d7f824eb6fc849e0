# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A GPU host with other users on it: a throwaway local user attacks, root runs the collection's modules.

Each attack of the issue "A host with other users on it" is played for real: the intruder is a real non-root user
(made for the test and removed after), his files are made by his own processes, and root runs the modules as
Ansible does (the module file and an arguments file, the real run_command) with the STAND-IN control daemon of
tests/standins (no GPU). Every attack must be refused before any change, in check mode and for real, with a
message that says why; no file outside the collection's own directories changes, and nothing is followed.
Needs root (CI runs as root); skipped, loudly, elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "unit"))
from module_file import CONTROL, control, run  # noqa: E402

# The intruder's Python: one any user may run (a venv under root's home is not).
INTRUDER_PYTHON = "/usr/bin/python3"
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd") or not os.path.exists(INTRUDER_PYTHON),
                                reason="the hostile-user suite needs root, useradd and %s (CI has them)" % INTRUDER_PYTHON)

NAME = "gpulab-intruder"


@pytest.fixture(scope="module")
def intruder():
    """A real local user, not root, in no group of root's; removed after the suite."""
    subprocess.run(["userdel", NAME], capture_output=True, check=False)
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", NAME], check=True,
                   capture_output=True)
    import pwd
    entry = pwd.getpwnam(NAME)
    yield {"uid": entry.pw_uid, "gid": entry.pw_gid}
    subprocess.run(["pkill", "-KILL", "-u", NAME], capture_output=True, check=False)
    subprocess.run(["userdel", NAME], capture_output=True, check=True)


def as_intruder(user, code):
    """Run Python `code` as the intruder; returns its stdout."""
    done = subprocess.run([INTRUDER_PYTHON, "-c", code], user=user["uid"], group=user["gid"], extra_groups=[],
                          capture_output=True, text=True, timeout=30, check=False, cwd="/")
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def shared():
    """A folder like /tmp: root's, writable by everyone, sticky. The attacks happen in it."""
    path = tempfile.mkdtemp(prefix="gpulab-hostile-", dir="/tmp")
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def secret():
    """A file only root may read, outside the shared folder: what a planted link aims at."""
    folder = tempfile.mkdtemp(prefix="gpulab-root-")
    path = os.path.join(folder, "secret")
    with open(path, "w") as handle:
        handle.write("root's secret\n")
    os.chmod(path, 0o600)
    yield path
    shutil.rmtree(folder, ignore_errors=True)


def tree(*roots):
    """Everything under roots, without following links: {path: (type, mode, uid, size, content hash or target)}."""
    seen = {}
    for root in roots:
        for folder, dirs, files in os.walk(root, followlinks=False):
            for name in [""] + dirs + files:
                path = os.path.join(folder, name) if name else folder
                st = os.lstat(path)
                what = stat.S_IFMT(st.st_mode)
                extra = os.readlink(path) if stat.S_ISLNK(st.st_mode) else (
                    hashlib.sha256(open(path, "rb").read()).hexdigest() if stat.S_ISREG(st.st_mode) else None)
                seen[path] = (what, stat.S_IMODE(st.st_mode), st.st_uid, st.st_size, extra)
    return seen


def daemons_of(pipe):
    """PIDs of processes whose environment names this pipe directory (what a started daemon would have)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/environ" % entry, "rb") as handle:
                    env = handle.read().split(b"\0")
            except OSError:
                continue
            if ("CUDA_MPS_PIPE_DIRECTORY=%s" % pipe).encode() in env and int(entry) != os.getpid():
                found.append(int(entry))
    return found


def modules_against(pipe, log, state, extra=None):
    """Every module that would touch this pipe directory, with root's arguments: (name, args)."""
    common = dict({"pipe_directory": pipe, "log_directory": log, "control_binary": CONTROL}, **(extra or {}))
    return [
        ("mps_daemon", dict(common, state_directory=state, default_active_thread_percentage=50,
                            default_pinned_memory_limit="1536M")),
        ("mps_daemon", dict(common, state_directory=state, state="stopped")),
        ("mps_info", dict(common, state_directory=state)),
        ("mps_client_probe", dict(common, timeout=5)),
        ("mps_plan", {"pipe_directory": pipe, "log_directory": log, "state_directory": state,
                      "control_binary": CONTROL}),
    ]


def assert_all_refused(cases, why, watched, tmp_path):
    before = tree(*watched)
    for check in (True, False):
        for name, args in cases:
            result = run(name, args, check=check, folder=str(tmp_path))
            assert result.get("failed"), (name, args, result)
            assert any(w in result["msg"] for w in why), (name, result["msg"])
            assert tree(*watched) == before, "%s changed something (check mode %s)" % (name, check)


def test_a_pipe_directory_the_intruder_made_first_is_refused(intruder, shared, secret, tmp_path):
    """He makes the pipe directory before root does, plants a link named like the record the modules once wrote
    there (aimed at root's secret) and a `control` socket of his own: root's modules touch none of it."""
    pipe, log, state = os.path.join(shared, "nvidia-mps"), os.path.join(shared, "log"), os.path.join(shared, "state")
    as_intruder(intruder, """
import os, socket
os.mkdir(%(pipe)r, 0o755)
os.symlink(%(secret)r, os.path.join(%(pipe)r, "gpulab-mps-defaults.json"))
s = socket.socket(socket.AF_UNIX); os.chdir(%(pipe)r); s.bind("control")
""" % {"pipe": pipe, "secret": secret})
    assert os.stat(pipe).st_uid == intruder["uid"]
    assert_all_refused(modules_against(pipe, log, state), ["not the daemon's user", "owned by uid %d" % intruder["uid"]],
                       [shared, os.path.dirname(secret)], tmp_path)
    assert open(secret).read() == "root's secret\n" and stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert not daemons_of(pipe)


def test_a_world_writable_pipe_directory_is_refused_not_chmodded(intruder, shared, tmp_path):
    pipe = os.path.join(shared, "open")
    os.mkdir(pipe)
    os.chmod(pipe, 0o777)  # root's, but anyone could replace the sockets in it
    assert_all_refused(modules_against(pipe, os.path.join(shared, "log"), os.path.join(shared, "state")),
                       ["writable by group or others"], [shared], tmp_path)
    assert stat.S_IMODE(os.stat(pipe).st_mode) == 0o777  # never silently changed


def test_a_link_to_roots_directory_is_not_followed(intruder, shared, tmp_path):
    """/tmp/nvidia-mps a link to a directory of root's: the stale-socket cleanup once deleted root's regular files
    there whose names match the daemon's sockets."""
    roots = tempfile.mkdtemp(prefix="gpulab-rootdir-")
    try:
        for name in ("control", "control_lock", "control_privileged", "nvidia-cuda-mps-control.pid"):
            with open(os.path.join(roots, name), "w") as handle:
                handle.write("root's file %s\n" % name)
        pipe = os.path.join(shared, "nvidia-mps")
        as_intruder(intruder, "import os; os.symlink(%r, %r)" % (roots, pipe))
        assert_all_refused(modules_against(pipe, os.path.join(shared, "log"), os.path.join(shared, "state")),
                           ["is a symbolic link"], [shared, roots], tmp_path)
        # A link further up the path, made by the intruder, is not followed either.
        as_intruder(intruder, "import os; os.symlink(%r, %r)" % (os.path.dirname(roots), os.path.join(shared, "up")))
        deep = os.path.join(shared, "up", os.path.basename(roots))
        assert_all_refused(modules_against(deep, os.path.join(shared, "log"), os.path.join(shared, "state")),
                           ["is a symbolic link"], [shared, roots], tmp_path)
        assert sorted(os.listdir(roots)) == ["control", "control_lock", "control_privileged",
                                             "nvidia-cuda-mps-control.pid"]
    finally:
        shutil.rmtree(roots, ignore_errors=True)


def test_a_state_directory_the_intruder_made_first_is_refused(intruder, shared, tmp_path):
    state = os.path.join(shared, "state")
    as_intruder(intruder, "import os; os.mkdir(%r, 0o755)" % state)
    pipe, log = os.path.join(shared, "pipe"), os.path.join(shared, "log")
    before = tree(shared)
    for check in (True, False):
        result = run("mps_daemon", {"pipe_directory": pipe, "log_directory": log, "state_directory": state,
                                    "control_binary": CONTROL, "default_active_thread_percentage": 50},
                     check=check, folder=str(tmp_path))
        assert result.get("failed") and "state_directory" in result["msg"] and "not the daemon's user" in result["msg"]
        assert tree(shared) == before and not daemons_of(pipe)


def test_a_pid_the_intruder_writes_into_the_daemons_pid_file_is_ignored(intruder, shared, tmp_path):
    """MPS makes its pid file writable by everyone. He writes the pid of a process of his own into it: root's stop
    neither waits for that process nor signals it, and cleans up after the real daemon."""
    pipe, log, state = os.path.join(shared, "pipe"), os.path.join(shared, "log"), os.path.join(shared, "state")
    args = {"pipe_directory": pipe, "log_directory": log, "state_directory": state, "control_binary": CONTROL}
    try:
        assert run("mps_daemon", args, folder=str(tmp_path))["changed"]
        pid_file = os.path.join(pipe, "nvidia-cuda-mps-control.pid")
        assert stat.S_IMODE(os.stat(pid_file).st_mode) == 0o666  # as MPS makes it
        sleeper = subprocess.Popen([INTRUDER_PYTHON, "-c", "import time; time.sleep(60)"], user=intruder["uid"],
                                   group=intruder["gid"], extra_groups=[])
        as_intruder(intruder, "open(%r, 'w').write('%d')" % (pid_file, sleeper.pid))
        stopped = run("mps_daemon", dict(args, state="stopped", timeout=5), folder=str(tmp_path))
        assert not stopped.get("failed"), stopped.get("msg")
        assert stopped["changed"] and sleeper.poll() is None
        assert "Cannot find MPS control daemon process" in control(pipe, log, "get_server_list")
        assert os.listdir(pipe) == [] and not daemons_of(pipe)
    finally:
        control(pipe, log, "quit -t 0")
        subprocess.run(["pkill", "-KILL", "-u", NAME], capture_output=True, check=False)


def test_relative_and_unit_unsafe_paths_are_refused(shared, tmp_path):
    """On the GPU host a relative pipe_directory started a second daemon under the working directory."""
    cases = [{"pipe_directory": "relative/pipe"}, {"pipe_directory": os.path.join(shared, "a b")},
             {"pipe_directory": os.path.join(shared, "a;b")}, {"log_directory": os.path.join(shared, "$HOME")}]
    before = tree(shared)
    for extra in cases:
        args = dict({"pipe_directory": os.path.join(shared, "pipe"), "log_directory": os.path.join(shared, "log"),
                     "state_directory": os.path.join(shared, "state"), "control_binary": CONTROL}, **extra)
        for name in ("mps_daemon", "mps_info", "mps_plan"):
            result = run(name, args, folder=str(tmp_path))
            assert result.get("failed"), (name, extra)
            assert "absolute path" in result["msg"] or "systemd unit" in result["msg"], result["msg"]
    assert tree(shared) == before


def fake_binary(folder, body):
    path = os.path.join(folder, "nvidia-cuda-mps-control")
    with open(path, "w") as handle:
        handle.write("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)
    return path


def test_a_hanging_control_binary_is_bounded(shared, tmp_path):
    binary = fake_binary(str(tmp_path), "exec sleep 600\n")
    cases = modules_against(os.path.join(shared, "pipe"), os.path.join(shared, "log"), os.path.join(shared, "state"),
                            {"control_binary": binary})
    for name, args in cases:
        if name == "mps_plan":
            continue  # it only finds the binary
        args = dict(args, timeout=2)
        started = time.time()
        result = run(name, args, folder=str(tmp_path), timeout=60)
        assert time.time() - started < 30, name
        assert result.get("failed") and "did not finish within 2" in result["msg"], (name, result.get("msg"))
        assert result.get("cmd") == [binary], result


def test_output_the_parsers_do_not_know_is_a_clear_error(shared, tmp_path):
    """mps_daemon ended in a Python traceback on output its parsers did not expect (mps_info did not)."""
    binary = fake_binary(str(tmp_path), "cat >/dev/null\necho '*** garbage from a broken binary ***'\n")
    for name, args in modules_against(os.path.join(shared, "pipe"), os.path.join(shared, "log"),
                                      os.path.join(shared, "state"), {"control_binary": binary}):
        if name == "mps_plan":
            continue  # it only finds the binary
        result = run(name, args, folder=str(tmp_path))  # run() fails the test on a traceback
        assert result.get("failed"), name
        assert "garbage from a broken binary" in (result.get("stdout") or ""), (name, result)
        assert result.get("cmd") == [binary] and result.get("rc") == 0, result


def test_a_control_socket_that_is_not_the_daemons_is_not_talked_to(intruder, shared, tmp_path):
    """Had he replaced `control` with his own program's socket (or with a plain file), root's modules once believed
    his answers: defaults 'read back' as asked, a stop that said 'not running' and left the real daemon behind."""
    pipe, log = os.path.join(shared, "pipe"), os.path.join(shared, "log")
    os.mkdir(pipe, 0o755)
    server = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(pipe)
    try:
        server.bind("control")
    finally:
        os.chdir(cwd)
    server.listen(1)
    os.chown(os.path.join(pipe, "control"), intruder["uid"], intruder["gid"])
    try:
        for name, args in modules_against(pipe, log, os.path.join(shared, "state")):
            if name == "mps_plan":
                continue  # it talks to no daemon
            result = run(name, args, folder=str(tmp_path))
            assert result.get("failed") and "refusing to talk to" in result["msg"], (name, result.get("msg"))
            assert "not of the daemon's user" in result["msg"]
        os.unlink(os.path.join(pipe, "control"))
        with open(os.path.join(pipe, "control"), "w") as handle:
            handle.write("not a socket\n")
        result = run("mps_info", {"pipe_directory": pipe, "log_directory": log, "control_binary": CONTROL},
                     folder=str(tmp_path))
        assert result.get("failed") and "is not a socket" in result["msg"]
        assert os.path.exists(os.path.join(pipe, "control"))  # nothing removed that the collection did not make
    finally:
        server.close()
