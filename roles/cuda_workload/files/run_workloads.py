# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run sample CUDA workloads side by side, prove whether each one is an MPS client, and do the seeds' experiment.

A CUDA process whose CUDA_MPS_PIPE_DIRECTORY points nowhere does not fail: it silently runs WITHOUT MPS. So each
workload is started with --handshake: it creates its CUDA context, prints "READY <pid>" and waits. While they all
wait, this runner asks the MPS control daemon, through the collection's one client (_mps_control.MpsControl), for the
client list of every server (get_client_list: output no user controls) and looks for each PID. Only then does it let
them run (one line on stdin each), collects their per-iteration times and their "RESULT {json}" line, and prints one
JSON report as its LAST line of output.

One run:
    run_workloads.py [--lib DIR] [--pipe-dir DIR] [--control-binary PATH] [--timeout S] [--client-env VAR=VALUE ...]
                     --mode mps|no-mps --workload NAME=COMMAND [--workload NAME=COMMAND ...]
The seeds' experiment (seed 002's matmul workers, seed 003's kernel pair), what `make lab` reports at its end:
    run_workloads.py [same options] --experiment [--modes no-mps,mps] [--out DIR]
                     --workload GROUP/NAME=COMMAND [--workload GROUP/NAME=COMMAND ...]
    For each mode and each group: the group's first workload alone, then all of them at once. The report adds the
    table (seconds per worker, aggregate throughput, the MPS/time-slicing ratio and what it says, in words) as JSON
    and markdown; --out DIR writes seed_experiment.json and seed_experiment.md there.

--mode mps: CUDA_MPS_PIPE_DIRECTORY=DIR, and every workload must be a client of the daemon there.
--mode no-mps: CUDA_MPS_PIPE_DIRECTORY = a new empty directory, and no workload may be a client of DIR's daemon.
--client-env: more environment for every workload (a QoS class's CUDA_MPS_* variables). The workloads get this
process's environment with these over it; the control binary never does (MpsControl builds its environment).
COMMAND is split like a shell would (shlex) but run without a shell. Standard library only, besides the
collection's module_utils (gpulab_collection.py beside this file finds
them: --lib DIR holding ansible_collections/gpulab/mps, or the checkout this file belongs to). It runs on a GPU host as
shipped by the role gpulab.mps.cuda_workload, and inside a pod (the same files from a ConfigMap).

In a pod with a PID namespace of its own the daemon lists PIDs as the host sees them; a workload is then matched by the
PID namespace: a `ps` row confirmed by get_client_list, every row naming that PID agreeing, whose NAMESPACE is
/proc/self/ns/pid's (the kernel's word); the evidence says so. That match is made only where it proves something:
never in the host's own PID namespace, nor where the daemon's process is visible (the namespace is shared).
Exit status: 0 every workload ran, checked its results and was (or was not) an MPS client as the mode says;
1 otherwise; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpulab_collection  # noqa: E402  (beside this file)

gpulab_collection.load(program=__file__)
from ansible_collections.gpulab.mps.plugins.module_utils import _mps_output as out  # noqa: E402
from ansible_collections.gpulab.mps.plugins.module_utils._mps_control import (  # noqa: E402
    DEFAULT_LOG_DIRECTORY, MpsControl, MpsControlError, find_control_binary)
from ansible_collections.gpulab.mps.plugins.module_utils._trust import pid_namespace  # noqa: E402

READY_RE = re.compile(r"^READY (\d+)\s*$")
# MPS against time-slicing: a ratio within these bounds is "even".
EVEN = (0.95, 1.05)
# Under MPS, two workers at once bringing less than this over one alone: one already fills the GPU.
FILLS = 1.25
SCHEMA = "gpulab.mps/seed-experiment/1"


def own_pid_namespace():
    """Inode of this process's PID namespace, as `ps` prints it in NAMESPACE (e.g. 4026531836), or None."""
    return pid_namespace("self")


def namespace_for_matching(control):
    """Our PID namespace where matching by it proves membership, else None."""
    namespace = own_pid_namespace()
    if namespace in (None, out.INIT_PID_NAMESPACE) or control.daemon_pid() is not None:
        return None
    return namespace


def match_clients(pids, lists, rows, namespace):
    """{pid: evidence or None}: a PID in a server's get_client_list, else (in a PID namespace of its own) a row of our
    namespace.

    lists: {server: [client pids]} (get_client_list); rows: `ps` read against them (MpsControl.ps). A row is used for
    a namespace match only when every row naming its PID agrees on the namespace (a client's name can print a row
    shaped line naming a listed PID). Rows matched by namespace are handed out one per workload, so that N workloads
    need N rows. `namespace` is None where a namespace match proves nothing (the caller decides: the host's own
    namespace, or one the daemon shares)."""
    server_of = {}
    for server, clients in sorted(lists.items()):
        for pid in clients:
            server_of.setdefault(pid, server)
    found = {}
    for pid in pids:
        found[pid] = ("pid %d in get_client_list of server %d" % (pid, server_of[pid])) if pid in server_of else None
    spare = []
    if namespace:
        namespaces = {}
        for row in rows:
            namespaces.setdefault(row["pid"], set()).add((row["namespace"], row["server"]))
        for pid, seen in sorted(namespaces.items()):
            if pid not in pids and len(seen) == 1 and list(seen)[0][0] == namespace:
                spare.append((pid, list(seen)[0][1]))
    for pid in pids:
        if found[pid] is None and spare:
            listed, server = spare.pop(0)
            found[pid] = "listed as pid %d of this PID namespace %s (get_client_list of server %d)" % (
                listed, namespace, server)
    return found


def die_with_parent():
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no orphan workloads
    except Exception:
        pass


class Workload(object):
    def __init__(self, name, command, env):
        self.name, self.command = name, command
        self.mps_env = dict((k, v) for k, v in sorted(env.items()) if k.startswith("CUDA_MPS_")
                            and k != "CUDA_MPS_PIPE_DIRECTORY")
        self.proc = subprocess.Popen(shlex.split(command), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, preexec_fn=die_with_parent, close_fds=True)
        self.lines, self.buffer, self.ready, self.result, self.under_mps = [], b"", None, None, None
        self.eof = False  # its output is closed: everything it printed has been read

    def feed(self, data):
        self.buffer += data
        while b"\n" in self.buffer:
            raw, self.buffer = self.buffer.split(b"\n", 1)
            line = raw.decode("utf-8", "replace").rstrip()
            self.lines.append(line)
            print("[%s] %s" % (self.name, line), file=sys.stderr, flush=True)  # progress, as it comes
            match = READY_RE.match(line)
            if match and self.ready is None:
                self.ready = int(match.group(1))
            elif line.startswith("RESULT "):
                try:
                    self.result = json.loads(line[len("RESULT "):])
                except ValueError:
                    self.result = {"check": "error", "error": "unreadable RESULT line"}

    def go(self):
        try:
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.flush()
            self.proc.stdin.close()
        except (OSError, ValueError):
            pass

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def pump(workloads, until, deadline):
    """Read every workload's output until until(w) holds for all, or the deadline passes.

    A workload is done when its output reaches EOF, not when it exits: a fast one may exit with lines still
    in the pipe."""
    selector = selectors.DefaultSelector()
    for w in workloads:
        selector.register(w.proc.stdout, selectors.EVENT_READ, w)
    try:
        while time.time() < deadline and not all(until(w) for w in workloads):
            events = selector.select(timeout=min(1.0, max(0.0, deadline - time.time())))
            for key, _mask in events:
                data = os.read(key.fileobj.fileno(), 65536)
                if data:
                    key.data.feed(data)
                else:
                    selector.unregister(key.fileobj)
                    key.data.eof = True
                    key.data.proc.wait()
            if not selector.get_map():
                break
    finally:
        selector.close()


def work_unit(result):
    """(units of one iteration, unit name) of a workload, from its RESULT: a matmul's FLOP in TFLOP, else one kernel
    (the kernel pair) or one iteration."""
    if result.get("workload") == "matmul" and isinstance(result.get("size"), int):
        return 2.0 * result["size"] ** 3 / 1e12, "TFLOP/s"
    if result.get("workload") == "kernel_pair":
        return 1.0, "kernels/s"
    return 1.0, "iterations/s"


def summarize(w, under_mps, evidence):
    times = [float(line.split(":")[1].split()[0]) for line in w.lines if line.startswith("iteration ")]
    result = w.result or {}
    started, ended = result.get("started_at"), result.get("ended_at")
    timed = isinstance(started, (int, float)) and isinstance(ended, (int, float)) and ended >= started
    # Seconds of the worker's timed iterations: its own wall clock where it reports one, else the sum of its CUDA-event
    # times (both include what time-slicing or MPS cost it).
    seconds = (ended - started) if timed else (sum(times) / 1000.0 if times else None)
    return {
        "name": w.name, "command": w.command, "pid": w.proc.pid, "rc": w.proc.returncode,
        "under_mps": under_mps, "evidence": evidence, "mps_env": w.mps_env, "iteration_ms": times,
        "median_ms": sorted(times)[len(times) // 2] if times else None, "seconds": seconds,
        "started_at": started if timed else None, "ended_at": ended if timed else None,
        "check": result.get("check", "no RESULT line"), "result": result, "output_tail": w.lines[-8:],
    }


def workload_env(pipe_directory, client_env):
    """A workload's environment: this process's (what CUDA and Python need, and in a pod what the pod spec or the
    device plugin gave the container, a QoS class's variables included), the class of --client-env over it, and the
    mode's pipe directory. Each worker's CUDA_MPS_* variables are in the report (mps_env)."""
    env = dict(os.environ)
    env.update(client_env)
    env["CUDA_MPS_PIPE_DIRECTORY"] = pipe_directory
    env["PYTHONUNBUFFERED"] = "1"
    return env


def server_limits(control, servers):
    """{server: {"active_thread_percentage", "pinned_memory_limit"}} of the servers that served the clients: what
    each started with (a running server keeps the defaults it started with), for the table's reasons."""
    held = {}
    for server in servers:
        entry = {"active_thread_percentage": None, "pinned_memory_limit": None}
        try:
            entry["active_thread_percentage"] = control.active_thread_percentage(server)
            entry["pinned_memory_limit"] = control.server_pinned_limit(server, 0)
        except MpsControlError as error:
            entry["error"] = str(error)[:300]
        held[str(server)] = entry
    return held


def run_once(args, control, mode, specs, client_env):
    """One run: start the workloads, prove membership while they hold their contexts, let them run. The report."""
    problems, found, let_run = [], {}, False
    empty = tempfile.mkdtemp(prefix="gpulab-no-mps-") if mode == "no-mps" else None
    env = workload_env(empty or args.pipe_dir, client_env)
    deadline = time.time() + args.timeout
    workloads = []
    report = {"mode": mode, "pipe_directory": args.pipe_dir, "client_pipe_directory": env["CUDA_MPS_PIPE_DIRECTORY"],
              "control_binary": control.binary if control else None, "workloads": [], "client_lists": None,
              "servers": {}}
    try:
        for name, command in specs:
            try:
                workloads.append(Workload(name, command, env))
            except OSError as exc:
                problems.append("%s: cannot start %r: %s" % (name, command, exc))
        if problems:
            raise RuntimeError("start")
        pump(workloads, lambda w: w.ready is not None or w.eof, deadline)
        not_ready = [w.name for w in workloads if w.ready is None]
        if not_ready:
            problems.append("workloads %s never said READY (no CUDA context?): %s" % (not_ready, " | ".join(
                "%s: %s" % (w.name, " / ".join(w.lines[-3:])) for w in workloads if w.ready is None)))
            raise RuntimeError("ready")

        # The proof, while every context is held: each PID in a server's get_client_list (mode mps), or in none.
        pids = [w.proc.pid for w in workloads]
        found, answered, why = dict((pid, None) for pid in pids), False, ""
        if control is not None:
            wait_until = time.time() + (args.ps_wait if mode == "mps" else 0)
            namespace = namespace_for_matching(control)
            while True:
                try:
                    lists = control.client_lists()
                    rows = control.ps(lists) if namespace else []
                    answered, why = True, ""
                    report["client_lists"] = dict((str(s), c) for s, c in sorted(lists.items()))
                except MpsControlError as error:
                    lists, rows, answered, why = {}, [], False, str(error)
                found = match_clients(pids, lists, rows, namespace)
                if mode != "mps" or all(found.values()) or time.time() >= wait_until:
                    break
                time.sleep(0.5)
            if mode == "mps" and answered:
                servers = sorted(set(int(s) for s, c in (report["client_lists"] or {}).items() if set(c) & set(pids)))
                report["servers"] = server_limits(control, servers)
        report["daemon_answered"] = answered
        for w in workloads:
            w.under_mps = found[w.proc.pid] is not None
        if mode == "mps":
            if control is None:
                problems.append("cannot prove the workloads run under MPS: %s" % args.binary_problem)
            elif not answered:
                problems.append("cannot prove the workloads run under MPS: %s" % why[:400])
            else:
                missing = [w.name for w in workloads if not w.under_mps]
                if missing:
                    problems.append("%s ran WITHOUT MPS: in no get_client_list of the daemon in %s (a client whose "
                                    "pipe directory is wrong silently falls back)" % (", ".join(missing), args.pipe_dir))
        else:
            wrong = [w.name for w in workloads if w.under_mps]
            if wrong:
                problems.append("%s ARE MPS clients although MPS should be off" % ", ".join(wrong))
        if problems:
            raise RuntimeError("membership")

        for w in workloads:
            w.go()
        let_run = True
        pump(workloads, lambda w: w.eof, deadline)
        for w in workloads:
            if not w.eof:
                problems.append("%s did not finish within --timeout %.0f s" % (w.name, args.timeout))
    except RuntimeError:
        pass
    finally:
        for w in workloads:
            w.stop()
        if empty:
            shutil.rmtree(empty, ignore_errors=True)
    for w in workloads:
        entry = summarize(w, w.under_mps, found.get(w.proc.pid))
        report["workloads"].append(entry)
        if not let_run or any(w.name in p for p in problems):
            continue  # stopped before it ran (the reason is said), or already explained
        if entry["check"] not in ("ok", "no RESULT line"):
            problems.append("%s: %s (exit %s)%s" % (w.name, entry["check"], entry["rc"], (
                ": " + entry["result"]["error"]) if entry["result"].get("error") else ""))
        elif entry["rc"] != 0 or entry["check"] != "ok":
            problems.append("%s exited %s without a good RESULT line: %s" % (
                w.name, entry["rc"], " / ".join(entry["output_tail"][-3:])))
    report["problems"] = problems
    report["ok"] = not problems
    for entry in report["workloads"]:
        print("%-12s pid %-7s %-9s median %s ms over %d iterations, check %s" % (
            entry["name"], entry["pid"], "MPS" if entry["under_mps"] else "no MPS",
            "%.3f" % entry["median_ms"] if entry["median_ms"] is not None else "-", len(entry["iteration_ms"]),
            entry["check"]), file=sys.stderr)
    return report


# --- the seeds' experiment: one table -------------------------------------------------------------------------------

def aggregate(run):
    """(aggregate throughput, unit) of a run: every worker's work over the span from the first start to the last end
    (their wall clocks), or over the slowest worker's seconds where a worker reports no wall clock; None when a worker
    did not finish."""
    workers = run["workloads"]
    if not workers or not run["ok"] or any(w["seconds"] in (None, 0) for w in workers):
        return None, None
    work, unit = 0.0, None
    for w in workers:
        per, unit = work_unit(w["result"])
        work += per * len(w["iteration_ms"] or w["result"].get("ms") or [])
    if all(w["started_at"] is not None for w in workers):
        span = max(w["ended_at"] for w in workers) - min(w["started_at"] for w in workers)
    else:
        span = max(w["seconds"] for w in workers)
    return (work / span if span > 0 else None), unit


def title(group, runs):
    """What a group is, from what its workers said of themselves (RESULT)."""
    result = next((w["result"] for r in runs for w in r["workloads"] if w["result"]), {})
    if result.get("workload") == "matmul":
        return "matmul %sx%s float32, %d iterations (seed 002)" % (
            result.get("size", "?"), result.get("size", "?"), len(result.get("ms") or []))
    if result.get("workload") == "kernel_pair":
        blocks = result.get("blocks")
        return "kernel pair add + scale%s (seed 003)" % (", %s blocks each" % blocks if blocks else "")
    return group


def held_back(run):
    """Why the servers of an MPS run held each client back, in words ("" when nothing did): the limits each server
    started with, read back from it."""
    reasons = []
    for server, held in sorted((run.get("servers") or {}).items()):
        threads, pinned = held.get("active_thread_percentage"), held.get("pinned_memory_limit")
        parts = (["%g %% of the SMs" % threads] if threads is not None and threads < 100 else []) + (
            ["%s of pinned memory" % pinned] if pinned else [])
        if parts:
            reasons.append("its server (%s) holds each client to %s" % (server, " and to ".join(parts)))
    return "; ".join(reasons)


def judge(mps, ts, alone_mps, together, run):
    """The words of an MPS row: the ratio of its aggregate to time-slicing's, and what it says, plainly where MPS
    loses."""
    if mps is None:
        return "not measured (the run failed)"
    if ts is None:
        return "no time-slicing run to compare with"
    ratio = mps / ts
    limits = held_back(run)
    if not together:
        if ratio < EVEN[0]:
            return "x%.2f: MPS LOSES: one client alone gains nothing from MPS%s" % (
                ratio, ", and " + limits if limits else "")
        if ratio <= EVEN[1]:
            return "x%.2f: even: one client alone gains nothing from MPS" % ratio
        return "x%.2f: MPS faster, even alone" % ratio
    fills = alone_mps is not None and mps / alone_mps < FILLS
    reasons = [r for r in (limits, "one worker already fills the GPU, so two at once add little" if fills else "")
               if r]
    if ratio < EVEN[0]:
        return "x%.2f: MPS LOSES%s" % (ratio, ": " + "; ".join(reasons) if reasons else "")
    if ratio <= EVEN[1]:
        return "x%.2f: even: %s" % (ratio, "; ".join(reasons) or "MPS bought nothing here")
    if fills:
        return "x%.2f: MPS wins a little: time-slicing pays for context switches; %s" % (ratio, "; ".join(reasons))
    return "x%.2f: MPS wins: the workers ran side by side" % ratio


def seed_table(runs):
    """The table rows ({workload, run, proven, seconds, aggregate, unit, ratio, says}) of the experiment's runs."""
    rows = []
    groups = []
    for run in runs:
        if run["group"] not in groups:
            groups.append(run["group"])
    for group in groups:
        mine = [r for r in runs if r["group"] == group]
        found = dict(((r["mode"], r["together"]), r) for r in mine)
        rates = dict((key, aggregate(r)) for key, r in found.items())
        first = True
        for together in (False, True):
            for mode in ("no-mps", "mps"):
                run = found.get((mode, together))
                if run is None:
                    continue
                rate, unit = rates[(mode, together)]
                n = len(run["workloads"])
                proven = sum(1 for w in run["workloads"] if w["under_mps"])
                row = {
                    "group": group, "workload": title(group, mine) if first else "",
                    "run": "%d %s, %s" % (n, "alone" if n == 1 else "at once", "MPS" if mode == "mps" else
                                          "time-slicing"),
                    "mode": mode, "clients": n, "together": together,
                    "proven": "%d of %d MPS clients" % (proven, n) if n > 1 else (
                        "an MPS client" if proven else "not an MPS client"),
                    "seconds": [w["seconds"] for w in run["workloads"]],
                    "aggregate": rate, "unit": unit, "ratio": None, "says": "",
                }
                if mode == "mps":
                    ts = (rates.get(("no-mps", together)) or (None, None))[0]
                    alone = (rates.get(("mps", False)) or (None, None))[0]
                    row["ratio"] = rate / ts if rate and ts else None
                    row["says"] = judge(rate, ts, alone, together, run)
                elif not run["ok"]:
                    row["says"] = "not measured (the run failed)"
                rows.append(row)
                first = False
    return rows


def _seconds(values):
    return ", ".join("%.3f" % v if v is not None else "-" for v in values) or "-"


def _rate(value, unit):
    if value is None:
        return "-"
    return "%s %s" % (("%.1f" % value) if value >= 10 else ("%.3g" % value), unit)


def render_table(rows):
    """The table in markdown (readable as plain text in the play's output)."""
    lines = ["| workload | run | proven by get_client_list | seconds per worker | aggregate | MPS / time-slicing |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append("| %s | %s | %s | %s | %s | %s |" % (
            row["workload"], row["run"], row["proven"], _seconds(row["seconds"]), _rate(row["aggregate"], row["unit"]),
            row["says"]))
    return "\n".join(lines)


def render_markdown(report):
    daemon = report["daemon"]
    lines = ["# The seeds' experiment: MPS against time-slicing", "",
             render_table(report["table"]), "",
             "Each worker's seconds are its own timed iterations (its wall clock); the aggregate is all workers' work "
             "from the first start to the last end. MPS rows: every worker's PID was in a server's get_client_list "
             "of the daemon in %s; time-slicing rows: the workers had an empty pipe directory and were in no client "
             "list. MPS / time-slicing compares the aggregates." % daemon["pipe_directory"],
             "", "The daemon's defaults: %s." % daemon["defaults"]]
    if report["problems"]:
        lines += ["", "## Problems", ""] + ["- " + p for p in report["problems"]]
    return "\n".join(lines) + "\n"


def daemon_defaults(control):
    """The daemon's defaults in words, read through the client ("unknown" where it does not answer)."""
    if control is None:
        return "unknown (no control binary)"
    try:
        threads = control.default_active_thread_percentage()
        pinned = control.default_pinned_limit(0)
    except MpsControlError as error:
        return "unknown (%s)" % str(error)[:200]
    sms = "%g %%" % threads if threads is not None else "all"
    memory = "pinned memory %s on device 0" % pinned if pinned else "no pinned memory limit"
    return "%s of the SMs per client, %s" % (sms, memory)


def experiment(args, control, groups, client_env):
    """Every mode, every group: its first workload alone, then all of it at once. The report with its table."""
    runs, problems = [], []
    for mode in args.modes:
        for group, specs in groups:
            for together in ([False, True] if len(specs) > 1 else [False]):
                chosen = specs if together else specs[:1]
                label = "%s, %d %s, %s" % (group, len(chosen), "at once" if together else "alone", mode)
                print("=== %s" % label, file=sys.stderr, flush=True)
                run = run_once(args, control, mode, chosen, client_env)
                run.update(group=group, together=together)
                runs.append(run)
                problems.extend("%s: %s" % (label, p) for p in run["problems"])
    report = {"schema": SCHEMA, "daemon": {"pipe_directory": args.pipe_dir, "defaults": daemon_defaults(control),
                                           "control_binary": control.binary if control else None},
              "modes": args.modes, "client_env": client_env, "runs": runs, "problems": problems, "ok": not problems}
    report["table"] = seed_table(runs)
    report["table_text"] = render_table(report["table"])
    report["markdown"] = render_markdown(report)
    return report


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lib", help="directory holding ansible_collections/gpulab/mps (default: this file's checkout)")
    p.add_argument("--mode", choices=["mps", "no-mps"], default="mps")
    p.add_argument("--experiment", action="store_true", help="the seeds' experiment, with its table")
    p.add_argument("--modes", default="no-mps,mps", help="--experiment: no-mps and/or mps, comma-separated")
    p.add_argument("--out", help="--experiment: write seed_experiment.json and seed_experiment.md here")
    p.add_argument("--pipe-dir", default=os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"))
    p.add_argument("--log-dir", default=DEFAULT_LOG_DIRECTORY)
    p.add_argument("--control-binary", default="")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for one run, start to finish")
    p.add_argument("--ps-wait", type=float, default=10.0, help="seconds for every workload to show in a client list")
    p.add_argument("--client-env", action="append", default=[], metavar="VAR=VALUE",
                   help="more environment for every workload (a QoS class's CUDA_MPS_* variables)")
    p.add_argument("--workload", action="append", default=[], metavar="[GROUP/]NAME=COMMAND")
    args = p.parse_args(argv)
    specs, groups = [], []
    for item in args.workload:
        name, _sep, command = item.partition("=")
        if not name or not command.strip():
            p.error("--workload takes NAME=COMMAND, got %r" % item)
        specs.append((name, command))
        group, _sep, short = name.rpartition("/")
        if args.experiment:
            if not group or not short:
                p.error("--experiment takes --workload GROUP/NAME=COMMAND, got %r" % item)
            if not groups or groups[-1][0] != group:
                if group in [g for g, _s in groups]:
                    p.error("--experiment: give the workloads of group %s one after the other" % group)
                groups.append((group, []))
            groups[-1][1].append((short, command))
    if not specs:
        p.error("give at least one --workload NAME=COMMAND")
    args.specs, args.groups = specs, groups
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or [m for m in args.modes if m not in ("no-mps", "mps")]:
        p.error("--modes takes no-mps and/or mps")
    args.modes = [m for m in ("no-mps", "mps") if m in args.modes]  # time-slicing first, before an MPS server runs
    args.client_env = client_environment(args.client_env, p.error)
    return args


def client_environment(items, error):
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not re.match(r"^CUDA_MPS_[A-Z_]+$", name) or name == "CUDA_MPS_PIPE_DIRECTORY":
            error("--client-env takes CUDA_MPS_VARIABLE=VALUE (not the pipe directory, which the mode sets), got %r"
                  % item)
        env[name] = value
    return env


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    client_env = args.client_env
    binary, args.binary_problem = find_control_binary(args.control_binary or None)
    control = MpsControl(binary, args.pipe_dir, args.log_dir) if binary else None
    if args.experiment:
        report = experiment(args, control, args.groups, client_env)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "seed_experiment.json"), "w") as handle:
                json.dump(report, handle, indent=1, sort_keys=True)
            with open(os.path.join(args.out, "seed_experiment.md"), "w") as handle:
                handle.write(report["markdown"])
        print(report["table_text"], file=sys.stderr, flush=True)
    else:
        report = run_once(args, control, args.mode, args.specs, client_env)
    print(json.dumps(report, sort_keys=True), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
