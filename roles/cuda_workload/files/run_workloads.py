# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run sample CUDA workloads side by side and prove whether each one is an MPS client.

A CUDA process whose CUDA_MPS_PIPE_DIRECTORY points nowhere does not fail: it silently runs WITHOUT MPS. So
each workload is started with --handshake: it creates its CUDA context, prints "READY <pid>" and waits. While
they all wait, this runner asks the MPS control daemon for `ps` and looks for each PID. Only then does it let
them run (one line on stdin each), collects their per-iteration times and their "RESULT {json}" line, and
prints one JSON summary as its LAST line of output.

    run_workloads.py --mode mps|no-mps [--pipe-dir DIR] [--control-binary PATH] [--timeout S]
                     --workload NAME=COMMAND [--workload NAME=COMMAND ...]

--mode mps: CUDA_MPS_PIPE_DIRECTORY=DIR, and every workload must be in the daemon's `ps`.
--mode no-mps: CUDA_MPS_PIPE_DIRECTORY = a new empty directory, and no workload may be in `ps` of DIR's daemon.
COMMAND is split like a shell would (shlex) but run without a shell. Standard library only: it runs on a GPU
host as shipped by the role gpulab.mps.cuda_workload, and inside a pod (the same file from a ConfigMap).

The daemon's `ps` is read by _mps_output.py, the collection's one parser of the control CLI, shipped beside this
file by the role (and in the pod's ConfigMap). In a pod with a PID namespace of its own the daemon lists PIDs as
the host sees them; a workload is then matched by the PID namespace (the NAMESPACE column of `ps` against
/proc/self/ns/pid), and the evidence says so. That match is made only where it proves something: never in the
host's own PID namespace, nor in one the daemon shares, where every process has the same NAMESPACE.
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

READY_RE = re.compile(r"^READY (\d+)\s*$")


def _load_output_parser():
    """_mps_output, the collection's parser of the control CLI: beside this file (shipped by the role), or in the
    checkout this file belongs to (roles/cuda_workload/files -> plugins/module_utils)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (here, os.path.join(here, "..", "..", "..", "plugins", "module_utils")):
        if os.path.isfile(os.path.join(folder, "_mps_output.py")):
            sys.path.insert(0, os.path.abspath(folder))
            import _mps_output  # pylint: disable=import-outside-toplevel
            return _mps_output
    raise SystemExit("run_workloads.py: _mps_output.py (the collection's MPS parser) is not beside it")


out = _load_output_parser()


def own_pid_namespace():
    """Inode of this process's PID namespace, as `ps` prints it in NAMESPACE (e.g. 4026531836), or None."""
    try:
        return re.sub(r"\D", "", os.readlink("/proc/self/ns/pid")) or None
    except OSError:
        return None


def daemon_shares_namespace(pipe_dir):
    """Whether the daemon of pipe_dir is a process this one can see: then its `ps` PIDs are ours to compare."""
    try:
        with open(os.path.join(pipe_dir, out.PID_FILE)) as handle:
            pid = int(handle.read().strip())
        with open("/proc/%d/comm" % pid) as handle:
            return handle.read().startswith(out.CONTROL_BINARY[:15])
    except (OSError, ValueError):
        return False


def match_clients(pids, rows, namespace):
    """{pid: evidence or None}: a PID listed by `ps`, else (in a PID namespace of its own) a row of our namespace.

    `namespace` is None where a namespace match proves nothing (the caller decides: the host's own namespace,
    or one the daemon shares). Rows matched by namespace are handed out one per workload, so that N workloads
    need N rows.
    """
    listed = dict((r["pid"], r) for r in rows)
    found = {}
    for pid in pids:
        found[pid] = "pid %d in ps (server %d)" % (pid, listed[pid]["server"]) if pid in listed else None
    spare = [r for r in rows if r["pid"] not in pids and namespace and r["namespace"] == namespace]
    for pid in pids:
        if found[pid] is None and spare:
            row = spare.pop(0)
            found[pid] = "listed as pid %d of this PID namespace %s (server %d)" % (row["pid"], namespace, row["server"])
    return found


def namespace_for_matching(pipe_dir):
    """Our PID namespace where matching by it proves membership, else None."""
    namespace = own_pid_namespace()
    if namespace in (None, out.INIT_PID_NAMESPACE) or daemon_shares_namespace(pipe_dir):
        return None
    return namespace


def find_control(binary):
    if binary:
        return binary if os.path.isfile(binary) and os.access(binary, os.X_OK) else None
    return shutil.which(out.CONTROL_BINARY, path=os.pathsep.join([os.environ.get("PATH", "")] + list(out.BINARY_DIRECTORIES)))


def mps_ps(binary, pipe_dir):
    """(answered, rows, raw output) of `ps` on the daemon of pipe_dir."""
    env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=pipe_dir)
    try:
        done = subprocess.run([binary], input="ps\n", capture_output=True, text=True, env=env, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, [], str(exc)
    text = done.stdout + done.stderr
    if done.returncode != 0 or out.NO_DAEMON in text:
        return False, [], text.strip()
    try:
        return True, out.parse_ps(done.stdout), text.strip()
    except out.OutputError as exc:
        return False, [], "%s: %s" % (exc, text.strip())


def die_with_parent():
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no orphan workloads
    except Exception:
        pass


class Workload(object):
    def __init__(self, name, command, env):
        self.name, self.command = name, command
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


def summarize(w, under_mps, evidence):
    times = [float(line.split(":")[1].split()[0]) for line in w.lines if line.startswith("iteration ")]
    result = w.result or {}
    return {
        "name": w.name, "command": w.command, "pid": w.proc.pid, "rc": w.proc.returncode,
        "under_mps": under_mps, "evidence": evidence, "iteration_ms": times,
        "median_ms": sorted(times)[len(times) // 2] if times else None,
        "check": result.get("check", "no RESULT line"), "result": result, "output_tail": w.lines[-8:],
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["mps", "no-mps"], default="mps")
    p.add_argument("--pipe-dir", default=os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"))
    p.add_argument("--control-binary", default="")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for everything, start to finish")
    p.add_argument("--ps-wait", type=float, default=10.0, help="seconds for every workload to show in ps")
    p.add_argument("--workload", action="append", default=[], metavar="NAME=COMMAND")
    args = p.parse_args(argv)
    specs = []
    for item in args.workload:
        name, _sep, command = item.partition("=")
        if not name or not command.strip():
            p.error("--workload takes NAME=COMMAND, got %r" % item)
        specs.append((name, command))
    if not specs:
        p.error("give at least one --workload NAME=COMMAND")

    problems, found = [], {}
    binary = find_control(args.control_binary)
    empty = tempfile.mkdtemp(prefix="gpulab-no-mps-") if args.mode == "no-mps" else None
    env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=empty or args.pipe_dir, PYTHONUNBUFFERED="1")
    deadline = time.time() + args.timeout
    workloads, report = [], {"mode": args.mode, "pipe_directory": args.pipe_dir, "client_pipe_directory":
                             env["CUDA_MPS_PIPE_DIRECTORY"], "control_binary": binary, "workloads": []}
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

        # The proof, while every context is held.
        pids = [w.proc.pid for w in workloads]
        found, answered, raw = dict((pid, None) for pid in pids), False, ""
        if binary:
            wait_until = time.time() + (args.ps_wait if args.mode == "mps" else 0)
            while True:
                answered, rows, raw = mps_ps(binary, args.pipe_dir)
                found = match_clients(pids, rows, namespace_for_matching(args.pipe_dir))
                if args.mode != "mps" or all(found.values()) or time.time() >= wait_until:
                    break
                time.sleep(0.5)
        report.update({"daemon_answered": answered, "ps": raw[-2000:]})
        for w in workloads:
            w.under_mps = found[w.proc.pid] is not None
        if args.mode == "mps":
            if not binary:
                problems.append("nvidia-cuda-mps-control not found: cannot prove the workloads run under MPS "
                                "(pass --control-binary, or add it to the image)")
            elif not answered:
                problems.append("no MPS control daemon answers in %s: %s" % (args.pipe_dir, raw[:300]))
            else:
                missing = [w.name for w in workloads if not w.under_mps]
                if missing:
                    problems.append("%s ran WITHOUT MPS: not in `ps` of the daemon in %s (a client whose pipe "
                                    "directory is wrong silently falls back)" % (", ".join(missing), args.pipe_dir))
        else:
            wrong = [w.name for w in workloads if w.under_mps]
            if wrong:
                problems.append("%s ARE MPS clients although MPS should be off" % ", ".join(wrong))
        if problems:
            raise RuntimeError("membership")

        for w in workloads:
            w.go()
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
        if any(w.name in p for p in problems):
            continue  # already explained
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
    print(json.dumps(report, sort_keys=True), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
