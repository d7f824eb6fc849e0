# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""run_bounded, the one runner of external commands: over real child processes."""

from __future__ import annotations

import os
import time

import pytest

from ansible_collections.gpulab.mps.plugins.module_utils._command import (
    MAX_OUTPUT, SAFE_PATH, CommandError, CommandTimeout, base_environment, run_bounded)


def script(tmp_path, body, name="tool"):
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open("/proc/%d/stat" % pid, "rb") as handle:
        return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"


def test_a_command_that_answers(tmp_path):
    assert run_bounded([script(tmp_path, "cat\n")], 10, data="ps") == (0, "ps\n", "")


def test_a_command_that_hangs_is_killed_with_what_it_printed(tmp_path):
    started = time.time()
    with pytest.raises(CommandTimeout) as raised:
        run_bounded([script(tmp_path, "echo begun\nexec sleep 600\n")], 1, data="ps")
    assert time.time() - started < 10
    assert raised.value.stdout == "begun\n" and raised.value.details()["timeout"] == 1.0


def test_a_command_that_does_not_read_its_stdin_still_answers(tmp_path):
    """Regression (seen on the H200): the control CLI exits without reading stdin when no daemon listens; the write
    of the command then broke the pipe and run_command failed with 'Error executing command: [Errno 32] Broken
    pipe' instead of returning the CLI's 'Cannot find MPS control daemon process'."""
    tool = script(tmp_path, "exec 0<&-\nsleep 0.3\necho 'Cannot find MPS control daemon process'\nexit 1\n")
    assert run_bounded([tool], 10, data="get_server_list") == (1, "Cannot find MPS control daemon process\n", "")


def test_a_child_that_keeps_the_pipe_open_does_not_hold_the_call(tmp_path):
    """Regression (issue 20, unbounded calls): a child of the binary that kept stdout open hung the call (the
    collector's runner read to EOF) past every timeout. The call returns once the binary exits, and the child, ours
    since our call started it, is gone with its process group."""
    pid_file = tmp_path / "child"
    tool = script(tmp_path, "sleep 300 &\necho $! > %s\necho answer\n" % pid_file)
    started = time.time()
    assert run_bounded([tool], 30) == (0, "answer\n", "")
    assert time.time() - started < 5
    child = int(pid_file.read_text())
    deadline = time.time() + 5
    while alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_at_the_deadline_the_whole_process_group_goes(tmp_path):
    pid_file = tmp_path / "child"
    tool = script(tmp_path, "sleep 300 &\necho $! > %s\nsleep 300\n" % pid_file)
    with pytest.raises(CommandTimeout):
        run_bounded([tool], 1)
    child = int(pid_file.read_text())
    deadline = time.time() + 5
    while alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_a_daemon_it_starts_is_left_running(tmp_path):
    """`nvidia-cuda-mps-control -d` forks the daemon and exits: that daemon is what the call is for."""
    pid_file = tmp_path / "daemon"
    tool = script(tmp_path, "sleep 300 >/dev/null 2>&1 &\necho $! > %s\n" % pid_file)
    assert run_bounded([tool], 10, daemon=True)[0] == 0
    daemon = int(pid_file.read_text())
    try:
        time.sleep(0.2)
        assert alive(daemon)
    finally:
        os.kill(daemon, 9)


def test_output_past_the_cap_is_cut_and_said_so(tmp_path):
    """Regression (issue 20): a binary that floods its output put tens of MiB into a task's result."""
    tool = script(tmp_path, "head -c 20000000 /dev/zero | tr '\\0' x\n")
    rc, out, _err = run_bounded([tool], 60)
    assert rc == 0 and len(out) < MAX_OUTPUT + 200
    assert out.endswith("[gpulab.mps: output cut after %d bytes; the command printed 20000000]" % MAX_OUTPUT)


def test_the_environment_is_built_not_inherited(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    rc, out, _err = run_bounded([script(tmp_path, "env\n")], 10)
    assert sorted(v for v in out.split() if not v.startswith("PWD=")) == sorted(["PATH=" + SAFE_PATH, "LANG=C", "LC_ALL=C"])
    rc, out, _err = run_bounded([script(tmp_path, "env\n")], 10, env=base_environment({"CUDA_MPS_PIPE_DIRECTORY": "/p"}))
    assert "CUDA_MPS_PIPE_DIRECTORY=/p" in out.split() and "CUDA_VISIBLE_DEVICES=1" not in out


def test_a_binary_that_cannot_run_is_an_error_with_the_command(tmp_path):
    with pytest.raises(CommandError) as raised:
        run_bounded([str(tmp_path / "missing")], 10)
    assert raised.value.details()["cmd"] == [str(tmp_path / "missing")]


def test_output_that_is_not_utf8_is_read_with_replacement(tmp_path):
    rc, out, _err = run_bounded([script(tmp_path, "printf 'a\\377b\\n'\n")], 10)
    assert (rc, out) == (0, "a\ufffdb\n")
