# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""mps_client_probe: the decision "is this client under MPS", fed with the H100's ps table and client line.

The real client needs a GPU; it is exercised by the GPU lane (tests/gpu/lane.yml). Here its report is
the JSON line the client printed on the H100 (60_cli_exploration.txt) with the ps table it would read.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ansible_collections.gpulab.mps.plugins.module_utils import _cuda_client
from ansible_collections.gpulab.mps.plugins.modules import mps_client_probe
from conftest import transcript_output, transcript_text

NO_DAEMON = transcript_output("00_control_no_daemon.txt")
PS_BUSY = transcript_output("22_ps_busy.txt")  # lists client 497 of server 486
RECORDED = json.loads([line for line in transcript_text("60_cli_exploration.txt").splitlines()
                       if line.startswith('{"pid": 592')][0])  # the over-the-limit client of the exploration


def report(pid, ps=None, ps_rc=0, **extra):
    """The client's JSON line: the recorded one, with this pid and the ps table it read."""
    line = dict(RECORDED, pid=pid, **extra)
    if ps is not None:
        line.update(ps=ps, ps_rc=ps_rc)
    return json.dumps(line) + "\n"


@pytest.fixture
def args(tmp_path):
    binary = tmp_path / "nvidia-cuda-mps-control"
    binary.write_text("")
    binary.chmod(0o755)
    return {"control_binary": str(binary), "pipe_directory": str(tmp_path / "pipe"), "log_directory": str(tmp_path / "log")}


def client(args, alloc_mib=0):
    return _cuda_client.client_argv(sys.executable, 0, alloc_mib, hold=0, ps_binary=args["control_binary"], ps_wait=10)


def test_check_mode_runs_only_the_dial_tone(run_module, fake_cli, args):
    fake_cli.expect([args["control_binary"]], "ps", *PS_BUSY)
    result, failed = run_module(mps_client_probe, args, check_mode=True)
    fake_cli.done()
    assert not failed and not result["changed"]
    assert (result["dialtone"], result["client_checked"]) == (True, False)


def test_a_client_listed_by_ps_is_under_mps(run_module, fake_cli, args):
    fake_cli.expect([args["control_binary"]], "ps", *transcript_output("05_ps_empty.txt"))
    fake_cli.expect(client(args, 3000), None, report(497, PS_BUSY[0]))
    result, failed = run_module(mps_client_probe, dict(args, alloc_mib=3000))
    fake_cli.done()
    assert not failed and not result["changed"]
    assert result["under_mps"] is True and result["server"] == 486
    assert result["client"]["alloc"] == {"mib": 3000, "ok": False, "error": "CUDA_ERROR_OUT_OF_MEMORY"}
    assert fake_cli.calls[1]["env"] == {"CUDA_MPS_PIPE_DIRECTORY": args["pipe_directory"],
                                        "CUDA_MPS_LOG_DIRECTORY": args["log_directory"]}
    assert client(args, 3000)[3:] == ["--device", "0", "--alloc-mib", "3000", "--hold", "0.0", "--release-on-stdin", "0",
                                      "--ps-binary", args["control_binary"], "--ps-wait", "10.0"]


def test_a_client_that_fell_back_without_mps_fails(run_module, fake_cli, args):
    fake_cli.expect([args["control_binary"]], "ps", *PS_BUSY)
    fake_cli.expect(client(args), None, report(4242, PS_BUSY[0]))
    result, failed = run_module(mps_client_probe, args)
    assert failed
    assert result["msg"].startswith("CUDA client 4242 ran on GPU 0 but is NOT an MPS client")
    assert result["under_mps"] is False


def test_no_daemon_fails_the_dial_tone_without_running_a_client(run_module, fake_cli, args):
    fake_cli.expect([args["control_binary"]], "ps", *NO_DAEMON)
    result, failed = run_module(mps_client_probe, args)
    fake_cli.done()
    assert failed
    assert result["msg"].startswith("MPS dial-tone failed: no MPS control daemon answers in %s" % args["pipe_directory"])
    assert len(fake_cli.calls) == 1


def test_expect_mps_false_proves_a_client_runs_without_mps(run_module, fake_cli, args):
    fake_cli.expect([args["control_binary"]], "ps", *NO_DAEMON)
    fake_cli.expect(client(args), None, report(4242, NO_DAEMON[0], ps_rc=1))
    result, failed = run_module(mps_client_probe, dict(args, expect_mps=False))
    assert not failed
    assert (result["dialtone"], result["client_checked"], result["under_mps"]) == (False, True, False)


def test_expect_mps_false_fails_for_an_mps_client(run_module, fake_cli, args):
    fake_cli.expect([args["control_binary"]], "ps", *PS_BUSY)
    fake_cli.expect(client(args), None, report(497, PS_BUSY[0]))
    result, failed = run_module(mps_client_probe, dict(args, expect_mps=False))
    assert failed and result["msg"] == "CUDA client 497 runs under MPS (server 486), but expect_mps is false"


def test_a_cuda_error_is_reported(run_module, fake_cli, args):
    fake_cli.expect([args["control_binary"]], "ps", *PS_BUSY)
    fake_cli.expect(client(args), None, json.dumps({"pid": 77, "device": 0, "error": "cuInit failed: CUDA_ERROR_NO_DEVICE"}),
                    rc=2)
    result, failed = run_module(mps_client_probe, args)
    assert failed
    assert result["msg"] == "The CUDA probe client could not use GPU 0: cuInit failed: CUDA_ERROR_NO_DEVICE"


def test_a_client_that_prints_nothing_is_reported(run_module, fake_cli, args):
    fake_cli.expect([args["control_binary"]], "ps", *PS_BUSY)
    fake_cli.expect(client(args), None, "", rc=139, err="Segmentation fault")
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


def test_the_client_polls_ps_until_it_is_listed(tmp_path, monkeypatch):
    """read_ps of the client, against the stand-in daemon (tests/standins) with this process attached as a client."""
    import os
    standin = os.path.join(os.path.dirname(__file__), "..", "..", "..", "standins", "nvidia-cuda-mps-control")
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "pipe"))
    monkeypatch.setenv("CUDA_MPS_LOG_DIRECTORY", str(tmp_path / "log"))
    namespace = {}
    source = _cuda_client.CLIENT_SOURCE.rsplit("sys.exit(", 1)[0]
    exec(compile(source, "cuda_client", "exec"), namespace)  # pylint: disable=exec-used
    subprocess.run([standin, "-d"], check=True, timeout=30)
    try:
        output, rc = namespace["read_ps"](standin, os.getpid(), 0.5)
        assert rc == 0 and output.strip() == "Server not found"  # not a client: gives up after the wait
        subprocess.run([standin], input="standin_attach_client %d\n" % os.getpid(), text=True, check=True, timeout=30)
        output, rc = namespace["read_ps"](standin, os.getpid(), 10)
        assert rc == 0
        assert [row["pid"] for row in mps_client_probe.parse_ps(output)] == [os.getpid()]
    finally:
        subprocess.run([standin], input="quit\n", text=True, check=False, timeout=30)
