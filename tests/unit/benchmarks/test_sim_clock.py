# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The simulated backend's noisy-neighbour kernels run on a virtual clock (benchmarks/mps_bench_client.py,
SimWorkloads.latency_ms): what a latency launch reports is what the model says, from the neighbours that run, never
the time a busy machine took to run the simulation.

Why: tests/unit/benchmarks/test_qos_benchmark.py::test_a_failed_criterion_fails_the_run failed once on a loaded
machine (issue 21): the simulation measured real time (a latency client spinning for a free lock file beside
neighbours that hold them), so how busy the machine was decided how long a launch took, how many launches fit the
window (2), and whether the criterion passed. Here the machine is made "busy" on purpose (every sleep of the client
takes longer) and the reported latencies must not move."""

from __future__ import annotations

import fcntl
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import mps_bench_client as client  # noqa: E402

LATENCY_MS, FILL_MS = 1.0, 3.0


@pytest.fixture
def gpu(tmp_path, monkeypatch):
    """A simulated GPU: a pipe directory with a daemon (files the driver looks for), and a way to make clients."""
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "control").write_text("")
    (pipe / "nvidia-cuda-mps-control.pid").write_text("1\n")
    sim = tmp_path / "sim"
    sim.mkdir()
    held = []

    def make(mps=True, threads=None):
        monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(pipe) if mps else str(tmp_path / "empty"))
        if threads is None:
            monkeypatch.delenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", raising=False)
        else:
            monkeypatch.setenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", str(threads))
        args = client.parse_args(["--backend", "sim", "--sim-dir", str(sim), "--sim-latency-ms", str(LATENCY_MS),
                                  "--sim-fill-ms", str(FILL_MS)])
        return client.SimWorkloads(args)

    def neighbour(pid, groups):
        """A fill neighbour that runs: its marker, held locked (as SimWorkloads.begin_run holds it)."""
        handle = open(str(sim / ("fill-%d" % pid)), "w")
        handle.write("%d\n" % groups)
        handle.flush()
        fcntl.flock(handle, fcntl.LOCK_EX)
        held.append(handle)
        return handle

    yield make, neighbour
    for handle in held:
        handle.close()


def latencies(work, launches=3):
    """The latencies of a few launches. The window is long and the launches few, so that a busy machine (a launch
    of 7 ms that takes 50) still counts them: with a 50 ms window the time-slicing case counted none under load."""
    cmd = {"cmd": "run", "workload": "latency", "start_at": client.time.time(), "duration": 30.0, "warmup": 0,
           "max_launches": launches}
    result = client.run_command(work, cmd)
    assert result["count"] >= 1
    return set(result["latency_ms"])


@pytest.mark.parametrize("mps, groups, want", [
    (True, [], LATENCY_MS),                           # alone
    (True, [8, 8], LATENCY_MS + FILL_MS),             # MPS, neighbours without a thread limit fill every SM group
    (True, [1, 1], LATENCY_MS),                       # MPS, neighbours at 12 %: they leave groups free
    (False, [8, 8], LATENCY_MS + 2 * FILL_MS),        # time-slicing: a slice of each neighbour first
])
def test_a_latency_launch_takes_what_the_model_says(gpu, mps, groups, want):
    make, neighbour = gpu
    for i, count in enumerate(groups):
        neighbour(90001 + i, count)
    assert latencies(make(mps=mps)) == {want}


def test_the_simulated_latency_does_not_depend_on_how_busy_the_machine_is(gpu, monkeypatch):
    """A busy machine: every sleep of the client takes 4 ms longer than asked. The reported latencies stay those of
    the model (before the virtual clock they were the time a launch took here: 5 and 8 ms instead of 1 and 4)."""
    make, neighbour = gpu
    real_sleep = client.time.sleep
    monkeypatch.setattr(client.time, "sleep", lambda seconds: real_sleep(max(0.0, seconds) + 0.004))
    work = make(mps=True)
    assert latencies(work) == {LATENCY_MS}
    neighbour(90001, 8)
    neighbour(90002, 8)
    assert latencies(work) == {LATENCY_MS + FILL_MS}


def test_a_neighbour_that_ended_or_died_is_not_counted(gpu):
    make, neighbour = gpu
    gone = neighbour(90001, 8)
    fcntl.flock(gone, fcntl.LOCK_UN)  # its run ended (or it died: the kernel drops its lock)
    assert latencies(make(mps=True)) == {LATENCY_MS}


def test_a_fill_neighbour_marks_its_run_and_its_thread_share(gpu):
    make, _neighbour = gpu
    fill = make(mps=True, threads=12)
    assert fill.groups() == 1 and make(mps=True).groups() == 8 and make(mps=False, threads=12).groups() == 8
    fill.begin_run("fill")
    try:
        assert make(mps=True).running_fills() == [1]
    finally:
        fill.end_run("fill")
    assert make(mps=True).running_fills() == []
