# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The entry point of the collection's client on a host, for what runs without Ansible: the systemd unit of the host
daemon (mps_host), and an operator's shell.

This is a private module_utils of gpulab.mps: its API may change without notice. STANDARD LIBRARY ONLY.

Installed by the role gpulab.mps.mps_client under the plan's lib_directory with the client's module_utils, it reads
the plan that role wrote (plan.json, root's) and does one thing through the one client (_mps_control) and the one
daemon logic (_mps_daemon) - never a shell pipe into the control binary:

    python3 LIB/gpulab_mps.py --plan CONFIG/plan.json check-directories   # ExecStartPre: the directories are trusted
    python3 LIB/gpulab_mps.py --plan CONFIG/plan.json apply-defaults      # ExecStartPost: set, read back, record
    python3 LIB/gpulab_mps.py --plan CONFIG/plan.json stop [--timeout N]  # ExecStop: quit, forcing after N s
    python3 LIB/gpulab_mps.py --plan CONFIG/plan.json status              # the health, as mps_info judges it

Exit 0 on success, 1 with one line on stderr saying what failed and what to do, 2 for a plan it cannot trust.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ansible_collections.gpulab.mps.plugins.module_utils._mps_control import (
    DaemonNotRunning, MpsControl, MpsControlError)
from ansible_collections.gpulab.mps.plugins.module_utils._mps_daemon import DaemonError, DaemonState
from ansible_collections.gpulab.mps.plugins.module_utils._mps_health import summary
from ansible_collections.gpulab.mps.plugins.module_utils._plan import plan_problems
from ansible_collections.gpulab.mps.plugins.module_utils._trust import directory_problem, inspect_directory, read_small_file


class PlanFileError(Exception):
    """The plan file cannot be trusted or read."""


def load_plan(path):
    """The plan the role wrote: read only from a directory of root's (or this user's) that nobody else can write,
    never through a link."""
    if not os.path.isabs(path):
        raise PlanFileError("--plan must be an absolute path, got %r" % path)
    missing, reason = inspect_directory(os.path.dirname(path), (0, os.geteuid()))
    if missing or reason:
        raise PlanFileError("the plan %s cannot be trusted: %s" % (path, reason or "%s is missing" % missing))
    text = read_small_file(path, limit=8 << 20)
    if text is None:
        raise PlanFileError("the plan %s is missing or not a regular file: run the gpulab.mps.mps_client role "
                            "(mps_host and mps_metrics run it)" % path)
    try:
        plan = json.loads(text)
    except ValueError as error:
        raise PlanFileError("the plan %s is not JSON: %s" % (path, error))
    problems = plan_problems(plan)
    if problems:
        raise PlanFileError("the plan %s: %s" % (path, "; ".join(problems)))
    return plan


def check_directories(plan):
    """The pipe and log directories exist and are trusted (ExecStartPre: the daemon starts only then)."""
    problems = ["%s: %s" % (option, directory_problem(plan[option], os.geteuid(), creatable=False))
                for option in ("pipe_directory", "log_directory")
                if directory_problem(plan[option], os.geteuid(), creatable=False)]
    if problems:
        raise DaemonError("gpulab.mps: not a trusted directory, the MPS daemon is not started: " + "; ".join(problems))
    return "pipe and log directories trusted: %s, %s" % (plan["pipe_directory"], plan["log_directory"])


def apply_defaults(plan, timeout):
    """The plan's defaults on the daemon the unit just started: set what differs, read back, record the exact bytes
    (the same code as mps_daemon state=started, which then finds nothing to change)."""
    daemon = DaemonState(plan, state="started", timeout=timeout, defaults_applied_at_start=True)
    before = daemon.snapshot()
    if not before["running"]:
        raise DaemonError("no MPS control daemon answers in %s: the unit's daemon did not start" % plan["pipe_directory"])
    daemon.apply_defaults(before)
    for warning in daemon.warnings:
        say(sys.stderr, warning)
    return "defaults %s: active thread percentage %s, pinned memory limits %s" % (
        "applied" if daemon.changed else "already in force", plan["daemon"].get("active_thread_percentage"),
        plan["daemon"].get("pinned_memory_limit_mps") or "none")


def stop(plan, timeout):
    """`quit -t N` (ExecStop): the servers are forced down after N s, as the unit's stop timeout allows."""
    control = MpsControl.from_plan(plan, trusted_uids=[os.geteuid()])
    try:
        control.quit(force_after=timeout)
    except DaemonNotRunning:
        return "no MPS control daemon answers in %s: nothing to stop" % plan["pipe_directory"]
    return "quit sent to the MPS control daemon in %s (servers forced down after %d s)" % (plan["pipe_directory"], timeout)


def status(plan, timeout):
    control = MpsControl.from_plan(plan, timeout=timeout)
    ordinals = sorted(int(o) for o in (plan["daemon"].get("devices") or {"0": None}))
    _state, health = control.health(ordinals, expect_running=plan["daemon"].get("state") == "started")
    if not health["healthy"]:
        raise DaemonError(summary(health))
    return summary(health)


ACTIONS = {"check-directories": lambda plan, args: check_directories(plan),
           "apply-defaults": lambda plan, args: apply_defaults(plan, args.timeout),
           "stop": lambda plan, args: stop(plan, args.timeout),
           "status": lambda plan, args: status(plan, args.timeout)}


def say(stream, message):
    """One line for the journal (systemd logs each line of a unit's output): what was done, or what failed."""
    stream.write("gpulab.mps: %s\n" % " ".join(str(message).split("\n")))
    stream.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="gpulab_mps.py", description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--plan", required=True, help="the plan the gpulab.mps.mps_client role wrote (plan.json)")
    parser.add_argument("--timeout", type=int, default=30, help="seconds each call may take; for stop, the seconds "
                                                                "after which the servers are forced down")
    parser.add_argument("action", choices=sorted(ACTIONS))
    args = parser.parse_args(argv)
    if not 1 <= args.timeout <= 3600:
        parser.error("--timeout must be 1 to 3600 seconds")
    try:
        plan = load_plan(args.plan)
    except PlanFileError as error:
        say(sys.stderr, error)
        return 2
    try:
        say(sys.stdout, ACTIONS[args.action](plan, args))
    except (DaemonError, MpsControlError) as error:
        say(sys.stderr, error)
        return 1
    return 0
