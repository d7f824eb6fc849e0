# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""mps_client_probe: the decision "is this client under MPS", fed with the H100's ps table and client line.

The real client needs a GPU; it is exercised by the GPU lane (tests/gpu/lane.yml). Here the client is a stand-in
interpreter (the module's `python` option) that speaks the client's protocol: it prints the JSON line the client
printed on the H100 (60_cli_exploration.txt), holds until its stdin closes, and exits; the daemon's answers are
the recorded ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.gpulab.mps.plugins.module_utils import _cuda_client
from ansible_collections.gpulab.mps.plugins.module_utils._command import SAFE_PATH
from ansible_collections.gpulab.mps.plugins.modules import mps_client_probe
from conftest import transcript_output, transcript_text

NO_DAEMON = transcript_output("00_control_no_daemon.txt")
NO_SERVER = transcript_output("05_ps_empty.txt")
PS_BUSY = transcript_output("22_ps_busy.txt")  # lists client 497 of server 486
RECORDED = json.loads([line for line in transcript_text("60_cli_exploration.txt").splitlines()
                       if line.startswith('{"pid": 592')][0])  # the over-the-limit client of the exploration

FAKE_CLIENT = r'''#!%(python)s
# Stands for `python -c CLIENT_SOURCE ...`: prints its report line, holds until stdin closes (or hangs). What it does
# comes from a file beside it: the probe gives its client the plan's environment, not the test's.
import json, os, sys, time
with open(%(script)r) as handle:
    script = json.load(handle)
behaviour = script["behaviour"]
if behaviour == "hang":
    time.sleep(600)
if behaviour == "silent":
    sys.stderr.write("Segmentation fault\n")
    sys.exit(139)
print(script["report"], flush=True)
if behaviour == "error":
    sys.exit(2)
sys.stdin.read()
'''


@pytest.fixture
def args(tmp_path):
    binary = tmp_path / "nvidia-cuda-mps-control"
    binary.write_text("")
    binary.chmod(0o755)
    fake = tmp_path / "python"
    fake.write_text(FAKE_CLIENT % {"python": sys.executable, "script": str(tmp_path / "client.json")})
    fake.chmod(0o755)
    return {"control_binary": str(binary), "pipe_directory": str(tmp_path / "pipe"),
            "log_directory": str(tmp_path / "log"), "python": str(fake)}


@pytest.fixture
def client(tmp_path):
    """client(pid, behaviour="report", **extra): what the stand-in client prints (the recorded line, this pid)."""
    def set_client(pid, behaviour="report", report=None, **extra):
        (tmp_path / "client.json").write_text(json.dumps({
            "behaviour": behaviour, "report": json.dumps(report or dict(RECORDED, pid=pid, **extra))}))
    return set_client


def busy(fake, args, server_list="21_server_list_busy.txt", client_list="23_client_list.txt", ps=PS_BUSY, repeat=False):
    """What the probe asks for one look at the daemon: the servers, each one's clients, then `ps`."""
    fake.expect(ctl(args), "get_server_list", *transcript_output(server_list), repeat=repeat)
    if server_list != "04_server_list_empty.txt":
        fake.expect(ctl(args), "get_client_list 486", *transcript_output(client_list), repeat=repeat)
    if ps is not None:
        fake.expect(ctl(args), "ps", *ps, repeat=repeat)


def ctl(args):
    return [args["control_binary"]]


def test_check_mode_runs_only_the_dial_tone(run_module, fake_cli, args):
    busy(fake_cli, args)
    result, failed = run_module(mps_client_probe, args, check_mode=True)
    fake_cli.done()
    assert not failed and not result["changed"]
    assert (result["dialtone"], result["client_checked"]) == (True, False)


def test_a_client_listed_by_ps_is_under_mps_and_the_server_it_started_goes_again(run_module, fake_cli, args, client):
    """Regression: the probe's client started an MPS server that outlived it, so new defaults never reached that
    user's clients (with apply_to_running report). The server it made start, and that served only it, is shut down."""
    client(497)
    busy(fake_cli, args, server_list="04_server_list_empty.txt", ps=NO_SERVER)
    busy(fake_cli, args)
    fake_cli.expect(ctl(args), "get_client_list 486", "")
    fake_cli.expect(ctl(args), "shutdown_server 486", "")
    result, failed = run_module(mps_client_probe, dict(args, alloc_mib=3000))
    fake_cli.done()
    assert not failed and not result["changed"]
    assert result["under_mps"] is True and result["server"] == 486 and result["server_stopped"] is True
    assert result["client"]["alloc"] == {"mib": 3000, "ok": False, "error": "CUDA_ERROR_OUT_OF_MEMORY"}
    assert fake_cli.calls[0]["env"] == {"CUDA_MPS_PIPE_DIRECTORY": args["pipe_directory"],
                                        "CUDA_MPS_LOG_DIRECTORY": args["log_directory"], "LANG": "C", "LC_ALL": "C",
                                        "PATH": os.path.dirname(args["control_binary"]) + ":" + SAFE_PATH}


def test_a_server_that_ran_before_the_probe_is_left_alone(run_module, fake_cli, args, client):
    client(497)
    busy(fake_cli, args)
    busy(fake_cli, args)
    result, failed = run_module(mps_client_probe, args)
    fake_cli.done()
    assert not failed and result["server"] == 486 and result["server_stopped"] is False
    assert "shutdown_server 486" not in [c["data"] for c in fake_cli.calls]


def test_the_ps_wait_is_the_timeout_not_ten_seconds(run_module, fake_cli, args, client, monkeypatch):
    """Regression: timeout (default 60) was silently capped at 10 s for the wait on ps. The client shows up in ps
    after 12 s of the probe's clock here, within timeout=30: the probe must still see it."""
    clock = {"offset": 0.0}
    real = time.time

    class Clock(object):
        @staticmethod
        def time():
            return real() + clock["offset"]

        @staticmethod
        def sleep(seconds):
            clock["offset"] += 4.0

    monkeypatch.setattr(mps_client_probe, "time", Clock)
    client(497)
    busy(fake_cli, args, server_list="04_server_list_empty.txt", ps=NO_SERVER)
    for _poll in range(4):
        busy(fake_cli, args, server_list="04_server_list_empty.txt", ps=None)
    busy(fake_cli, args)
    fake_cli.expect(ctl(args), "get_client_list 486", "")
    fake_cli.expect(ctl(args), "shutdown_server 486", "")
    result, failed = run_module(mps_client_probe, dict(args, timeout=30))
    fake_cli.done()
    assert not failed, result["msg"]
    assert clock["offset"] >= 12 and result["under_mps"] is True


def test_a_client_that_fell_back_without_mps_fails(run_module, cli_answers, args, client):
    client(4242)
    answers = dict((command, transcript_output(name)[::-1]) for command, name in (
        ("get_server_list", "21_server_list_busy.txt"), ("get_client_list 486", "23_client_list.txt"),
        ("ps", "22_ps_busy.txt")))
    cli_answers(answers)
    result, failed = run_module(mps_client_probe, dict(args, timeout=2))
    assert failed
    assert result["msg"].startswith("CUDA client 4242 ran on GPU 0 but is NOT an MPS client")
    assert result["under_mps"] is False


def test_a_forged_ps_row_is_not_a_proof(run_module, cli_answers, args, client):
    """Regression (issue 20): the proof was the client's PID in `ps`, which prints every client's argv[0] raw: a
    client named "x\n4242 1 486 GPU-... 4026531836 y" made any PID look like an MPS client. The proof is now the
    server's client list (PIDs only)."""
    client(4242)
    forged = transcript_output("22_ps_busy.txt")[0].rstrip("\n") + "\n4242      1         486            " \
        "GPU-058fcf08-fc4a-49f5    4026531836     forged\n"
    answers = {"get_server_list": (0, transcript_output("21_server_list_busy.txt")[0]),
               "get_client_list 486": (0, transcript_output("23_client_list.txt")[0]), "ps": (0, forged)}
    cli_answers(answers)
    result, failed = run_module(mps_client_probe, dict(args, timeout=2))
    assert failed and result["under_mps"] is False
    assert result["msg"].startswith("CUDA client 4242 ran on GPU 0 but is NOT an MPS client")


def test_a_client_that_hangs_is_killed_at_the_timeout(run_module, fake_cli, args, client):
    """Regression: the probe's CUDA client had no bound at all: a client that hangs hung the play."""
    client(497, behaviour="hang")
    busy(fake_cli, args)
    started = time.time()
    result, failed = run_module(mps_client_probe, dict(args, timeout=2))
    assert time.time() - started < 10
    assert failed and "did not finish within timeout=2 s and was killed" in result["msg"]


def test_no_daemon_fails_the_dial_tone_without_running_a_client(run_module, fake_cli, args):
    fake_cli.expect(ctl(args), "get_server_list", *NO_DAEMON)
    result, failed = run_module(mps_client_probe, args)
    fake_cli.done()
    assert failed
    assert result["msg"].startswith("MPS dial-tone failed: no MPS control daemon answers in %s" % args["pipe_directory"])
    assert len(fake_cli.calls) == 1


def test_expect_mps_false_proves_a_client_runs_without_mps(run_module, fake_cli, args, client):
    client(4242)
    fake_cli.expect(ctl(args), "get_server_list", *NO_DAEMON)
    result, failed = run_module(mps_client_probe, dict(args, expect_mps=False))
    assert not failed
    assert (result["dialtone"], result["client_checked"], result["under_mps"]) == (False, True, False)


def test_expect_mps_false_fails_for_an_mps_client(run_module, fake_cli, args, client):
    client(497)
    busy(fake_cli, args)
    busy(fake_cli, args)
    result, failed = run_module(mps_client_probe, dict(args, expect_mps=False))
    assert failed and result["msg"] == "CUDA client 497 runs under MPS (server 486), but expect_mps is false"


def test_a_cuda_error_is_reported(run_module, fake_cli, args, client):
    client(77, behaviour="error", report={"pid": 77, "device": 0, "error": "cuInit failed: CUDA_ERROR_NO_DEVICE"})
    busy(fake_cli, args)
    result, failed = run_module(mps_client_probe, args)
    assert failed
    assert result["msg"] == "The CUDA probe client could not use GPU 0: cuInit failed: CUDA_ERROR_NO_DEVICE"


def test_a_client_that_prints_nothing_is_reported(run_module, fake_cli, args, client):
    client(1, behaviour="silent")
    busy(fake_cli, args)
    result, failed = run_module(mps_client_probe, args)
    assert failed and result["msg"] == "The CUDA probe client gave no report (the client printed nothing): Segmentation fault"


def test_the_client_reports_a_missing_driver(tmp_path):
    """The client itself, run here where libcuda.so.1 does not exist: one JSON line with the error, exit 2."""
    done = subprocess.run(_cuda_client.client_argv(sys.executable, hold=0), capture_output=True, text=True,
                          timeout=60, env={"LD_LIBRARY_PATH": str(tmp_path)}, check=False)
    if done.returncode == 0:
        pytest.skip("this machine has a CUDA driver")
    parsed = _cuda_client.parse_client_report(done.stdout)
    assert done.returncode == 2
    assert parsed["error"].startswith("cannot load libcuda.so.1")
