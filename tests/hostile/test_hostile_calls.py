# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 20, unbounded calls: every external call is bounded in time and in output. At the deadline the whole
process group goes, whatever holds its pipes; output past a cap is cut, and the result says so.

Played for real with control binaries (small scripts passed as control_binary, or in the collector's plan): one whose
background child keeps stdout open and sleeps (the binary itself exits at once, or sleeps too), and one that floods
tens of MiB. mps_daemon, mps_info and the metrics collector must return within their timeout plus a few seconds,
leave no process of the call behind, and keep their result small.
"""

from __future__ import annotations

import json
import os
import re

import pytest

import _hostile as h

pytestmark = h.NEEDS_ROOT

TIMEOUT = 3       # the bound asked of every call
SLACK = 15        # "a few seconds" on a busy machine: starting Python and Ansible's module code included
LIMIT = TIMEOUT + SLACK + 10   # past this the test kills the run and fails
MIB = 1 << 20


def hanging_binary(folder, binary_sleeps):
    """A control binary that reads its command, starts a child that keeps stdout open and sleeps, then exits (or
    sleeps too). Every PID of the call is written to `pids`."""
    pids = os.path.join(folder, "pids")
    body = 'cat >/dev/null\necho $$ >> %s\nsh -c \'echo $$ >> %s; exec sleep 31337\' &\n' % (pids, pids)
    body += "exec sleep 31338\n" if binary_sleeps else "exit 0\n"
    return h.script(os.path.join(folder, "nvidia-cuda-mps-control"), body), pids


def flooding_binary(folder):
    """A control binary that prints 40 MiB on stdout and 10 MiB on stderr, and exits 0."""
    return h.script(os.path.join(folder, "nvidia-cuda-mps-control"),
                    "cat >/dev/null\nhead -c %d /dev/zero | tr '\\0' x\nhead -c %d /dev/zero | tr '\\0' y >&2\n"
                    "exit 0\n" % (40 * MIB, 10 * MIB))


def assert_call_gone(procs, pids_file):
    with open(pids_file) as handle:
        pids = [int(line) for line in handle.read().split()]
    for pid in pids:
        procs.remember(pid)
    assert pids and len(pids) % 2 == 0, "the binary did not run as written: %s" % pids   # a binary and a child a call
    left = h.wait_until(lambda: not [p for p in pids if h.alive(p)], 5) or [p for p in pids if h.alive(p)]
    assert left is True, "processes of the call still run after the task: %s" % [
        (p, h.cmdline(p)) for p in pids if h.alive(p)]


def module_args(name, lab, binary):
    args = {"pipe_directory": lab["pipe"], "log_directory": lab["log"], "control_binary": binary, "timeout": TIMEOUT}
    if name == "mps_daemon":
        args["state_directory"] = lab["state"]
    return args


@pytest.mark.parametrize("name, binary_sleeps", [("mps_daemon", False), ("mps_daemon", True), ("mps_info", False)],
                         ids=["mps_daemon-binary-exits", "mps_daemon-binary-sleeps", "mps_info-binary-exits"])
def test_a_child_that_holds_the_output_open_does_not_hang_a_module(lab, procs, root_dir, tmp_path, name,
                                                                   binary_sleeps):
    binary, pids = hanging_binary(root_dir, binary_sleeps)
    done = h.run_module(name, module_args(name, lab, binary), str(tmp_path), limit=LIMIT)
    assert done.elapsed < TIMEOUT + SLACK, "%s took %.0f s with timeout %d" % (name, done.elapsed, TIMEOUT)
    assert done.get("failed"), h.summary(done)
    assert_call_gone(procs, pids)


def test_a_child_that_holds_the_output_open_does_not_hang_the_collector(lab, procs, root_dir, tmp_path):
    binary, pids = hanging_binary(root_dir, binary_sleeps=False)
    collector = h.install_collector(os.path.join(root_dir, "metrics"),
                                    h.plan_for(lab, str(tmp_path), control_binary=binary), timeout=TIMEOUT)
    rc, text, elapsed = h.run_collector(collector, limit=LIMIT)
    assert elapsed < TIMEOUT + SLACK, "the collector took %.0f s with timeout %d: %s" % (elapsed, TIMEOUT, text)
    assert rc in (0, 1), text   # the file was written (docs/metrics.md: an unresponsive daemon is a reading)
    # The binary answers nothing and exits: the call returns at once (its child holding the pipe is ended with it),
    # and the reading says that the daemon could not be read, not that all is well.
    series = h.series(collector)
    assert series.get('gpulab_mps_daemon_state{state="unresponsive"}') == 1 \
        or series["gpulab_mps_collector_success"] == 0, series
    assert_call_gone(procs, pids)


def said_cut(result):
    text = re.sub(r"x{16,}|y{16,}", "", json.dumps(result))
    return re.search(r"\b(cut|truncated)\b", text, re.IGNORECASE)


@pytest.mark.parametrize("name", ["mps_daemon", "mps_info"])
def test_a_flood_of_output_does_not_go_into_the_result(lab, root_dir, tmp_path, name):
    binary = flooding_binary(root_dir)
    done = h.run_module(name, module_args(name, lab, binary), str(tmp_path), limit=300)
    assert done.size < 2 * MIB, "%s returned %.1f MiB" % (name, done.size / float(MIB))
    assert done.get("failed"), h.summary(done)
    assert said_cut(done.result), "the result does not say that the output was cut: %s" % h.summary(done)


def test_a_flood_of_output_does_not_go_into_the_collectors_messages(lab, root_dir, tmp_path):
    binary = flooding_binary(root_dir)
    collector = h.install_collector(os.path.join(root_dir, "metrics"),
                                    h.plan_for(lab, str(tmp_path), control_binary=binary), timeout=TIMEOUT)
    rc, text, _elapsed = h.run_collector(collector, limit=300)
    assert len(text) < 2 * MIB, "the collector printed %.1f MiB (its journal gets all of it)" % (len(text) / float(MIB))
    assert rc == 1, text[:3000]
    assert h.series(collector)["gpulab_mps_collector_success"] == 0
