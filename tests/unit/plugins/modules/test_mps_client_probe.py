# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""mps_client_probe: the decision "is this client under MPS", fed with the H100's ps table and client line.

The real client needs a GPU; it is exercised by the GPU lane (tests/gpu/lane.yml). Here the child
process is faked with the JSON line the client printed on the H100 (60_cli_exploration.txt).
"""

from __future__ import annotations

import io
import json
import subprocess

import pytest

from ansible_collections.gpulab.mps.plugins.module_utils import _cuda_client
from ansible_collections.gpulab.mps.plugins.modules import mps_client_probe
from conftest import transcript_output, transcript_text

NO_DAEMON = transcript_output("00_control_no_daemon.txt")
PS_BUSY = transcript_output("22_ps_busy.txt")  # lists client 497
RECORDED_LINE = [line for line in transcript_text("60_cli_exploration.txt").splitlines()
                 if line.startswith('{"pid": 592')][0]  # the over-the-limit client of the exploration


class FakeClient(object):
    """A child that prints the recorded JSON line with the given pid, then waits for stdin to close."""
    instances = []

    def __init__(self, argv, pid, line, **kwargs):
        self.argv, self.pid, self.kwargs = argv, pid, kwargs
        report = json.loads(line)
        report["pid"] = pid
        self.stdout = io.BytesIO((json.dumps(report) + "\n").encode())
        self.stdin = io.BytesIO()
        self.stderr = io.BytesIO()
        self.waited = False
        FakeClient.instances.append(self)

    def wait(self, timeout=None):
        self.waited = True
        return 0


@pytest.fixture
def fake_client(monkeypatch):
    FakeClient.instances = []

    def install(pid, line=RECORDED_LINE):
        monkeypatch.setattr(mps_client_probe.subprocess, "Popen", lambda argv, **kw: FakeClient(argv, pid, line, **kw))
        monkeypatch.setattr(mps_client_probe.select, "select", lambda r, w, x, t: (r, [], []))
    return install


@pytest.fixture
def args(tmp_path):
    binary = tmp_path / "nvidia-cuda-mps-control"
    binary.write_text("")
    binary.chmod(0o755)
    return {"control_binary": str(binary), "pipe_directory": str(tmp_path / "pipe"), "log_directory": str(tmp_path / "log")}


def test_check_mode_runs_only_the_dial_tone(run_module, fake_cli, fake_client, args):
    fake_client(497)
    fake_cli.expect([args["control_binary"]], "ps", *PS_BUSY)
    result, failed = run_module(mps_client_probe, args, check_mode=True)
    fake_cli.done()
    assert not failed and not result["changed"]
    assert (result["dialtone"], result["client_checked"]) == (True, False)
    assert FakeClient.instances == []


def test_a_client_listed_by_ps_is_under_mps(run_module, fake_cli, fake_client, args):
    fake_client(497)
    fake_cli.expect([args["control_binary"]], "ps", *transcript_output("05_ps_empty.txt"))
    fake_cli.expect([args["control_binary"]], "ps", *PS_BUSY)
    result, failed = run_module(mps_client_probe, dict(args, alloc_mib=3000))
    fake_cli.done()
    assert not failed and not result["changed"]
    assert result["under_mps"] is True and result["server"] == 486
    assert result["client"]["alloc"] == {"mib": 3000, "ok": False, "error": "CUDA_ERROR_OUT_OF_MEMORY"}
    client = FakeClient.instances[0]
    assert client.waited
    assert client.kwargs["env"]["CUDA_MPS_PIPE_DIRECTORY"] == args["pipe_directory"]
    assert client.argv[1:3] == ["-c", _cuda_client.CLIENT_SOURCE]
    assert client.argv[3:] == ["--device", "0", "--alloc-mib", "3000", "--hold", "90.0", "--release-on-stdin", "1"]


def test_a_client_that_fell_back_without_mps_fails(run_module, fake_cli, fake_client, args, monkeypatch):
    fake_client(4242)

    class Clock(object):
        now = 1000.0

        def time(self):
            return self.now

        def sleep(self, seconds):
            self.now += seconds
    monkeypatch.setattr(mps_client_probe, "time", Clock())
    # The dial-tone, then a poll every 0.2 s for 1 s: the client (4242) never shows in the table.
    for _ in range(1 + 5):
        fake_cli.expect([args["control_binary"]], "ps", *PS_BUSY)
    result, failed = run_module(mps_client_probe, dict(args, timeout=1))
    fake_cli.done()
    assert failed
    assert result["msg"].startswith("CUDA client 4242 ran on GPU 0 but is NOT an MPS client")
    assert result["under_mps"] is False
    assert FakeClient.instances[0].waited


def test_no_daemon_fails_the_dial_tone(run_module, fake_cli, fake_client, args):
    fake_client(497)
    fake_cli.expect([args["control_binary"]], "ps", *NO_DAEMON)
    result, failed = run_module(mps_client_probe, args)
    assert failed
    assert result["msg"].startswith("MPS dial-tone failed: no MPS control daemon answers in %s" % args["pipe_directory"])
    assert FakeClient.instances == []


def test_expect_mps_false_proves_a_client_runs_without_mps(run_module, fake_cli, fake_client, args):
    fake_client(4242)
    fake_cli.expect([args["control_binary"]], "ps", *NO_DAEMON)
    result, failed = run_module(mps_client_probe, dict(args, expect_mps=False))
    assert not failed
    assert (result["dialtone"], result["client_checked"], result["under_mps"]) == (False, True, False)


def test_a_cuda_error_is_reported(run_module, fake_cli, fake_client, args):
    fake_client(77, json.dumps({"pid": 77, "device": 0, "error": "cuInit failed: CUDA_ERROR_NO_DEVICE"}))
    fake_cli.expect([args["control_binary"]], "ps", *PS_BUSY)
    result, failed = run_module(mps_client_probe, args)
    assert failed
    assert result["msg"] == "The CUDA probe client could not use GPU 0: cuInit failed: CUDA_ERROR_NO_DEVICE"


def test_client_source_compiles_and_reports_a_missing_driver(tmp_path):
    """The client itself, run here where libcuda.so.1 does not exist: one JSON line with the error, exit 2."""
    import sys
    done = subprocess.run(_cuda_client.client_argv(sys.executable, hold=0, release_on_stdin=False),
                          capture_output=True, text=True, timeout=60, env={"LD_LIBRARY_PATH": str(tmp_path)})
    if done.returncode == 0:
        pytest.skip("this machine has a CUDA driver")
    report = _cuda_client.parse_client_report(done.stdout.strip())
    assert done.returncode == 2
    assert report["error"].startswith("cannot load libcuda.so.1")
