# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""MPS against time-slicing, measured: N concurrent CUDA client processes, MPS off and on.

    PYTHONUNBUFFERED=1 python3 benchmarks/mps_benchmark.py --out OUT        (about 3 minutes on an H100)
    python3 benchmarks/mps_benchmark.py --quick --out OUT                   (about 1 minute)
    python3 benchmarks/mps_benchmark.py --dry-run                           (the plan; touches nothing)

Workloads (mps_bench_client.py): `spin`, a compute-bound kernel with a fixed number of blocks per launch, each
block filling one SM (the case MPS is made for); `matmul`, a 4096x4096 float32 matmul that fills the GPU (the
case it is not); `copy`, a memory-bound pass over 256 MiB that saturates memory bandwidth.

How it measures
- Clients are separate processes (MPS shares the GPU between processes), started once per mode as a pool of
  max(N) processes that create their context and warm up every workload; a run of N uses the first N of them.
- Every run: one warm-up launch per client, then all start at one instant (a start time on the shared clock),
  each launches and waits, again and again, for --duration seconds. Throughput is the sum of the clients'
  rates; latency is per launch, submit to completion. Figures are medians of --repeats runs, interleaved.
- MPS off: clients get CUDA_MPS_PIPE_DIRECTORY = an empty private directory, so they cannot reach any daemon,
  and each is proven NOT to be an MPS client (absent from the daemon's `ps`, and from NVML's list of MPS
  processes). MPS on: each client's PID must be in `echo ps | nvidia-cuda-mps-control` of the daemon used. A
  mode whose clients fail that check is not reported as measured.
- The ideal comes from the SM count measured on the device and the blocks each client launches.

MPS daemon
- Default: the script starts its own control daemon on a private pipe directory (`nvidia-cuda-mps-control -d`)
  and always quits it at the end (`quit`, then SIGTERM to that daemon and its server only if it hangs).
- --pipe-dir DIR: use the daemon that already runs there (playbooks/benchmark.yml starts and stops it with
  gpulab.mps.mps_daemon). The script then starts and stops no daemon.
It never changes compute mode, clocks, power, persistence or MIG, and never resets the GPU.

Output in --out: mps_benchmark.json (everything), mps_benchmark.md (table and verdicts), mps_benchmark.png,
mps_benchmark.log (this console output), and mps_daemon.log (control.log and server.log of its own daemon).
The last thing printed is a short summary table. Exit status: 0 measured and every check passed; 1 a check or a
run failed (what was measured is still written); 2 it could not start (no GPU, no MPS binaries, bad arguments).

The provisioning time (site.yml host stages, cold and warm) is not measured here: tests/gpu/run.sh times it.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mps_bench_report as report  # noqa: E402  (beside this file)

# The collection's one client of MPS (_mps_control.MpsControl) and its one parser (_mps_output), from --lib DIR (a
# directory holding ansible_collections/gpulab/mps: playbooks/benchmark.yml ships one beside the scripts) or from the
# checkout this file belongs to. gpulab_collection.py (the role cuda_workload's) finds them: beside this script where
# the playbook ships it, else in the checkout.
for _folder in (HERE, os.path.join(HERE, "..", "roles", "cuda_workload", "files")):
    if os.path.isfile(os.path.join(_folder, "gpulab_collection.py")):
        sys.path.insert(0, os.path.abspath(_folder))
        break
import gpulab_collection  # noqa: E402

gpulab_collection.load(program=__file__)
from ansible_collections.gpulab.mps.plugins.module_utils import _mps_control as mps_control  # noqa: E402
from ansible_collections.gpulab.mps.plugins.module_utils import _mps_output as mps_out  # noqa: E402
from ansible_collections.gpulab.mps.plugins.module_utils._mps_control import (  # noqa: E402
    DEFAULT_LOG_DIRECTORY, MpsControl, MpsControlError, pid_alive)
from ansible_collections.gpulab.mps.plugins.module_utils._plan import local_plan  # noqa: E402
from ansible_collections.gpulab.mps.plugins.module_utils._trust import TrustError, ensure_directory  # noqa: E402

CLIENT = os.path.join(HERE, "mps_bench_client.py")
PREFIX = "@@gpulab "
# MPS variables that would change what a client gets: the benchmark measures MPS as configured by default.
CLIENT_ENV_DROP = ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
                   "CUDA_MPS_CLIENT_PRIORITY")
MPS_CLIENT_CAP = 48  # clients per device from Volta on

PRESETS = {
    "full": {"ns": "1,2,4,8,16", "workloads": "spin,matmul,copy", "repeats": 3, "duration": 1.0},
    "quick": {"ns": "1,4,8,16", "workloads": "spin,matmul", "repeats": 3, "duration": 0.3},
}


class BenchError(Exception):
    """Something the benchmark cannot go on without; the message says what and what to do."""


class Interrupted(BaseException):
    """A signal or the hard deadline: stop, clean up, report what was measured."""


# --- output -------------------------------------------------------------------------------------------------

class Console(object):
    """Prints progress as it happens (flushed) and keeps a copy for mps_benchmark.log."""

    def __init__(self):
        self.t0 = time.time()
        self.lines = []

    def __call__(self, message):
        line = "[%6.1fs] %s" % (time.time() - self.t0, message)
        self.lines.append(line)
        print(line, flush=True)


# --- the MPS control daemon ---------------------------------------------------------------------------------

class Daemon(object):
    """One MPS control daemon, chosen by its pipe directory; `own` when this script started it (and stops it).

    Spoken to only through the collection's client, MpsControl, made from _plan.local_plan: the control binary that
    find_control_binary finds (--control-binary, else root's and NVIDIA's directories, never the caller's PATH), and
    the environment of the daemon and of every CLI call built from the plan (the pipe and log directories, the trusted
    directories of LD_LIBRARY_PATH), never this process's. Nothing here runs the control binary itself.

    multiuser: start it with -M (the multi-user server of benchmarks/mps_multiuser.py); dir_mode: of the pipe and log
    directories it makes (0700; 0755 where clients of other users must reach it).
    """

    def __init__(self, pipe_dir, log_dir, own, say, control_binary=None, multiuser=False, dir_mode=0o700,
                 state_dir=None):
        options = {"pipe_directory": os.path.abspath(pipe_dir),
                   "log_directory": os.path.abspath(log_dir) if log_dir else DEFAULT_LOG_DIRECTORY,
                   "state_directory": os.path.abspath(state_dir) if state_dir else None,
                   "control_binary": os.path.abspath(control_binary) if control_binary else None,
                   "multiuser_server": multiuser}
        plan, errors = local_plan(options)
        if errors:
            raise BenchError("cannot speak to the MPS control daemon: %s" % "; ".join(errors))
        self.plan = plan
        self.control = MpsControl.from_plan(plan)
        self.own, self.say, self.multiuser, self.dir_mode = own, say, multiuser, dir_mode
        self.pid = None

    @property
    def pipe_dir(self):
        return self.control.pipe_directory

    @property
    def log_dir(self):
        return self.control.log_directory

    @property
    def binary(self):
        return self.control.binary

    def start_command(self):
        return " ".join(self.control.start_argv(self.multiuser))

    def answers(self):
        try:
            return self.control.is_running()
        except MpsControlError as exc:
            raise BenchError("the MPS control daemon in %s: %s" % (self.pipe_dir, exc))

    def start(self, timeout=30):
        for path in (self.pipe_dir, self.log_dir):
            try:
                ensure_directory(path, os.geteuid(), self.dir_mode)
            except TrustError as exc:
                raise BenchError("cannot use %s for the benchmark's MPS daemon: %s" % (path, exc))
        if self.answers():
            raise BenchError("a daemon already answers in %s: not starting another" % self.pipe_dir)
        try:
            rc, out, err = self.control.start_daemon(self.multiuser)
        except MpsControlError as exc:
            raise BenchError("MPS control daemon in %s did not start: %s" % (self.pipe_dir, exc))
        if rc == 0 and self.control.wait(self.answers, timeout):
            self.pid = self.control.daemon_pid()
            self.say("MPS control daemon started: pid %s, pipe directory %s (%s)" % (
                self.pid, self.pipe_dir, self.start_command()))
            return
        raise BenchError("MPS control daemon in %s did not start (`%s` exit %s): %s; is the NVIDIA driver loaded?" % (
            self.pipe_dir, self.start_command(), rc, (out + err).strip() or self.log_tail("control.log")))

    def client_lists(self):
        """{server: [client PIDs]}: get_client_list of every server, the proof of who is an MPS client."""
        try:
            return self.control.client_lists()
        except MpsControlError as exc:
            raise BenchError("the MPS control daemon in %s does not answer: %s" % (self.pipe_dir, exc))

    def ps(self, lists=None):
        """`ps` rows, each confirmed by get_client_list (what other users print in it is not a row)."""
        try:
            return self.control.ps(lists)
        except MpsControlError as exc:
            raise BenchError("the MPS control daemon in %s does not answer `ps`: %s" % (self.pipe_dir, exc))

    def stop(self, timeout=20):
        """Quit this script's own daemon (`quit -t`: its servers are forced down after `timeout` s) and wait for it.
        A daemon that does not go is reported with its PID, never signalled from here."""
        if not self.own:
            return
        pid = self.pid or self.control.daemon_pid()
        try:
            self.control.quit(force_after=timeout)
        except MpsControlError as exc:
            if self.answers():
                self.say("WARNING: quit: %s" % exc)
        gone = self.control.wait(lambda: not self.answers() and not (pid and pid_alive(pid)), timeout + 5)
        if not gone:
            raise BenchError("the benchmark's MPS control daemon %s in %s did not exit within %d s after quit: stop "
                             "it by hand (kill %s): %s" % (pid, self.pipe_dir, timeout + 5, pid, self.control.log_tail()))
        self.say("MPS control daemon %s stopped" % (pid or "?"))

    def log_tail(self, name, max_bytes=4000):
        return self.control.read_log(name, max_bytes).strip() if self.log_dir else ""


def client_file():
    """The file of the collection's client this script speaks to MPS through (for the report; the real path, since a
    temporary collection path is gone after the run)."""
    return os.path.realpath(mps_control.__file__)


# --- NVML: a second witness of who is an MPS client --------------------------------------------------------

def nvml_processes():
    """{"compute": set of PIDs with a CUDA context, "mps": set of MPS client PIDs (None where NVML cannot say),
    "driver": version}; None without NVML (nvidia-ml-py)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        seen = {"compute": set(), "mps": set(), "driver": None}
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            seen["driver"] = driver.decode() if isinstance(driver, bytes) else driver
        except Exception:
            pass
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                seen["compute"].add(int(proc.pid))
            try:
                for proc in pynvml.nvmlDeviceGetMPSComputeRunningProcesses(handle):
                    seen["mps"].add(int(proc.pid))
            except Exception:  # older drivers or bindings: NVML cannot tell MPS clients apart
                seen["mps"] = None
        return seen
    except Exception:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def check_membership(mode, pids, daemon, want_mps, say, client_pipe, wait=10.0, when="start"):
    """Prove that every client of the pool is (MPS on) or is not (MPS off) a client of MPS.

    The proof is each PID in a server's get_client_list (MpsControl.client_lists: output no user controls), never a
    `ps` row (`ps` prints each client's argv[0] raw, so any client can print rows). Returns {"ok", "listed",
    "missing"/"unexpected", "servers", "nvml", "line"}. MPS on: every PID must be listed (polled up to `wait` s: a
    client registers as its context comes up). MPS off: no PID may be listed, nor be in NVML's list of MPS client
    processes (that catches a client that reached some other daemon); NVML must also see each PID with a context,
    which shows the check looked at live clients.
    """
    deadline = time.time() + wait
    while True:
        lists = daemon.client_lists()
        server_of = dict((pid, server) for server, clients in sorted(lists.items(), reverse=True) for pid in clients)
        listed = sorted(p for p in pids if p in server_of)
        if not want_mps or len(listed) == len(pids) or time.time() >= deadline:
            break
        time.sleep(0.5)
    nvml = nvml_processes()
    result = {"mode": mode, "when": when, "pids": sorted(pids), "listed": listed,
              "servers": sorted(set(server_of[p] for p in listed)), "pipe_directory": daemon.pipe_dir, "nvml": None}
    problems = []
    if want_mps:
        missing = sorted(set(pids) - set(listed))
        result["missing"] = missing
        if missing:
            problems.append("%d of %d clients are in NO get_client_list of the MPS daemon in %s (PIDs %s): they run "
                            "without MPS" % (len(missing), len(pids), daemon.pipe_dir, missing))
    else:
        result["unexpected"] = listed
        if listed:
            problems.append("clients %s ARE MPS clients of %s although MPS should be off" % (listed, daemon.pipe_dir))
    if nvml is not None:
        mps_set = nvml["mps"]
        result["nvml"] = {
            "with_context": sorted(p for p in pids if p in nvml["compute"] or (mps_set and p in mps_set)),
            "mps_clients": None if mps_set is None else sorted(p for p in pids if p in mps_set),
        }
        if not want_mps and mps_set is not None and set(pids) & mps_set:
            # The daemon's client lists are the proof the mode rests on; NVML is a second witness. If they disagree,
            # say so loudly, but do not throw the mode away on it.
            result["witness_disagrees"] = ("NVML lists clients %s as MPS clients although they are in no client list "
                                           "of the daemon and MPS should be off" % sorted(set(pids) & mps_set))
        if want_mps and mps_set is not None and set(pids) - mps_set:
            say("note: NVML does not list %s among MPS client processes (the daemon's client lists do)"
                % sorted(set(pids) - mps_set))
    result["ok"] = not problems
    result["problems"] = problems
    evidence = "get_client_list of %s" % daemon.pipe_dir
    if result["nvml"] is not None:
        evidence += " and NVML (%d/%d with a context%s)" % (
            len(result["nvml"]["with_context"]), len(pids),
            "" if result["nvml"]["mps_clients"] is None else ", %d listed as MPS clients"
            % len(result["nvml"]["mps_clients"]))
    if want_mps:
        result["line"] = "MPS on: %d/%d clients are MPS clients (server %s), by %s" % (
            len(listed), len(pids), ",".join(str(s) for s in result["servers"]) or "-", evidence)
    else:
        result["line"] = "MPS off: %d/%d clients are NOT MPS clients (pipe directory %s is empty), by %s" % (
            len(pids) - len(listed), len(pids), client_pipe, evidence)
    return result


# --- client processes ---------------------------------------------------------------------------------------

def _die_with_parent():
    """In the child: get SIGKILL when the benchmark dies, so that no client outlives it."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Client(object):
    def __init__(self, argv, env, stderr_path):
        self.stderr_path = stderr_path
        self.stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, preexec_fn=_die_with_parent, close_fds=True)
        self.pid = self.proc.pid
        self.buffer = b""
        self.chatter = []

    def send(self, obj):
        try:
            self.proc.stdin.write((json.dumps(obj) + "\n").encode())
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def feed(self, data):
        """Bytes read from stdout -> protocol messages in them."""
        self.buffer += data
        messages = []
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            text = line.decode("utf-8", "replace")
            if text.startswith(PREFIX):
                try:
                    messages.append(json.loads(text[len(PREFIX):]))
                except ValueError:
                    self.chatter.append(text[:300])
            elif text.strip():
                self.chatter = (self.chatter + [text[:300]])[-20:]
        return messages

    def stderr_tail(self, max_bytes=1500):
        try:
            self.stderr.flush()
            with open(self.stderr_path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - max_bytes))
                return handle.read().decode("utf-8", "replace").strip()
        except (IOError, OSError):
            return ""

    def ask_to_exit(self):
        if self.proc.poll() is None:
            self.send({"cmd": "exit"})
        try:
            self.proc.stdin.close()
        except (OSError, ValueError):
            pass

    def release(self):
        for stream in (self.proc.stdout, self.proc.stdin):
            try:
                stream.close()
            except (OSError, ValueError, AttributeError):
                pass
        try:
            self.stderr.close()
        except (OSError, ValueError):
            pass

    def close(self, grace=10.0):
        stop_clients([self], grace)


def _wait_all(procs, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.05)
    return [p for p in procs if p.poll() is None]


def stop_clients(clients, grace=10.0):
    """Exit command and EOF to all, then SIGTERM, then SIGKILL those left: at most grace + 10 s in all.
    Returns the PIDs that were still alive at the end (none expected)."""
    for client in clients:
        client.ask_to_exit()
    left = _wait_all([c.proc for c in clients], grace)
    for proc in left:
        proc.terminate()
    left = _wait_all(left, 5)
    for proc in left:
        proc.kill()
    left = _wait_all(left, 5)
    for client in clients:
        client.release()
    return [p.pid for p in left]


def collect(clients, want, timeout):
    """One message of event `want` from each client, within `timeout` s. Raises BenchError naming the
    clients that died, erred or did not answer, with the end of their stderr."""
    pending = dict((c.proc.stdout.fileno(), c) for c in clients)
    got = {}
    selector = selectors.DefaultSelector()
    for fd in pending:
        selector.register(fd, selectors.EVENT_READ)
    deadline = time.time() + timeout
    try:
        while pending:
            left = deadline - time.time()
            if left <= 0:
                raise BenchError("no %r within %.0f s from client(s) %s; stderr: %s" % (
                    want, timeout, sorted(c.pid for c in pending.values()),
                    " | ".join(c.stderr_tail(400) for c in pending.values())[:1500]))
            for key, _events in selector.select(timeout=min(left, 1.0)):
                client = pending[key.fd]
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fd)
                    del pending[key.fd]
                    client.proc.wait(timeout=5)
                    raise BenchError("client %d exited (status %s) before sending %r: %s" % (
                        client.pid, client.proc.returncode, want,
                        client.stderr_tail() or " / ".join(client.chatter[-5:])))
                for message in client.feed(data):
                    if message.get("event") == "error":
                        raise BenchError("client %d failed: %s\n%s" % (client.pid, message.get("message"),
                                                                       message.get("traceback", "")))
                    if message.get("event") == want:
                        got[client.pid] = message
                        selector.unregister(key.fd)
                        del pending[key.fd]
                        break
    finally:
        selector.close()
    return [got[c.pid] for c in clients]


class Pool(object):
    """max(N) client processes of one mode, kept for all the runs of that mode."""

    def __init__(self, mode, size, argv, env, workdir, say):
        self.mode, self.size, self.argv, self.env, self.workdir, self.say = mode, size, argv, env, workdir, say
        self.clients = []

    def start(self, timeout):
        for i in range(self.size):
            stderr_path = os.path.join(self.workdir, "%s-client%02d.err" % (self.mode, i))
            self.clients.append(Client(self.argv, self.env, stderr_path))
        ready = collect(self.clients, "ready", timeout)
        bad = dict((r["pid"], r["checks"]) for r in ready if any(v != "ok" for v in r["checks"].values()))
        if bad:
            raise BenchError("%s clients failed their warm-up checks: %s" % (self.mode, bad))
        return ready

    def pids(self):
        return [c.pid for c in self.clients]

    def run(self, workload, n, duration, lead, timeout, warmup=1):
        start_at = time.time() + lead
        active = self.clients[:n]
        for client in active:
            if not client.send({"cmd": "run", "workload": workload, "start_at": start_at, "duration": duration,
                                "warmup": warmup}):
                raise BenchError("client %d no longer takes commands (exit %s): %s" % (
                    client.pid, client.proc.poll(), client.stderr_tail()))
        return collect(active, "result", lead + duration + timeout)

    def close(self, grace=10.0):
        left = stop_clients(self.clients, grace)
        if left:
            self.say("WARNING: clients still alive after SIGKILL: %s" % left)
        self.clients = []


# --- the plan -----------------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(
        description="NVIDIA MPS against time-slicing: N concurrent CUDA clients, MPS off and on.",
        epilog="Defaults: full preset (%s); --quick: %s." % (PRESETS["full"], PRESETS["quick"]))
    p.add_argument("--out", default="mps_benchmark_out", help="folder for the JSON, markdown, PNG and logs")
    p.add_argument("--quick", action="store_true", help="about one minute: fewer N, two workloads, short runs")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit; touches nothing")
    p.add_argument("--ns", help="client counts, comma-separated (default 1,2,4,8,16)")
    p.add_argument("--workloads", help="spin,matmul,copy (default all three; --quick: spin,matmul)")
    p.add_argument("--modes", default="ts,mps", help="ts (MPS off) and/or mps (MPS on), in that order")
    p.add_argument("--repeats", type=int, help="runs of each configuration; medians are reported (default 3)")
    p.add_argument("--duration", type=float, help="seconds each run measures (default 1.0; --quick 0.3)")
    p.add_argument("--spin-blocks", type=int, default=0,
                   help="blocks per spin launch (default: SMs // 8, so that 8 clients nearly fill the GPU)")
    p.add_argument("--spin-ms", type=float, default=2.0, help="duration of one spin launch alone (calibrated)")
    p.add_argument("--matmul-size", type=int, default=4096)
    p.add_argument("--copy-mib", type=int, default=256)
    p.add_argument("--device", type=int, default=0, help="CUDA device ordinal the clients use")
    p.add_argument("--backend", default="auto", choices=["auto", "cupy", "torch", "sim"],
                   help="auto: cupy, else torch; sim: no GPU, a model for testing this script")
    p.add_argument("--python", default=sys.executable, help="interpreter for the clients (needs cupy or torch)")
    p.add_argument("--pipe-dir", help="use the MPS daemon already running there (else start a private one)")
    p.add_argument("--log-dir", help="with --pipe-dir: that daemon's log directory (for the report)")
    p.add_argument("--control-binary", help="path of nvidia-cuda-mps-control (default: root's and NVIDIA's directories, "
                                            "as the collection's find_control_binary looks; never PATH)")
    p.add_argument("--lib", help="a directory holding ansible_collections/gpulab/mps (the collection's client); default: "
                                 "the checkout this script belongs to")
    p.add_argument("--budget-s", type=float,
                   help="stop adding repeats past this many seconds (default 240; --quick 80); every "
                        "configuration still gets one run")
    p.add_argument("--deadline-s", type=float, help="hard stop: clean up and report (default budget + 150)")
    p.add_argument("--start-timeout", type=float, default=240.0, help="seconds for a pool of clients to be ready")
    p.add_argument("--ps-wait", type=float, default=10.0,
                   help="seconds to wait for every MPS-on client to show in the daemon's ps")
    p.add_argument("--run-timeout", type=float, default=60.0,
                   help="seconds a run may take beyond its window before its clients count as hung")
    p.add_argument("--sim-sms", type=int, default=132, help=argparse.SUPPRESS)
    p.add_argument("--sim-ms", type=float, default=4.0, help=argparse.SUPPRESS)
    p.add_argument("--sim-fail", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "full"]
    args.ns = sorted(set(int(n) for n in (args.ns or preset["ns"]).split(",") if n.strip()))
    args.workloads = [w for w in (args.workloads or preset["workloads"]).split(",") if w.strip()]
    args.modes = [m for m in args.modes.split(",") if m.strip()]
    args.repeats = args.repeats or preset["repeats"]
    args.duration = args.duration or preset["duration"]
    args.budget_s = args.budget_s or (80.0 if args.quick else 240.0)
    args.deadline_s = args.deadline_s or args.budget_s + 150.0
    bad = [w for w in args.workloads if w not in ("spin", "matmul", "copy")]
    if bad or not args.workloads:
        p.error("unknown workload(s) %s: choose from spin, matmul, copy" % bad)
    if [m for m in args.modes if m not in report.MODES] or not args.modes:
        p.error("--modes takes ts and/or mps")
    if not args.ns or args.ns[0] < 1 or args.ns[-1] > MPS_CLIENT_CAP:
        p.error("client counts must be between 1 and %d (the MPS client cap per device)" % MPS_CLIENT_CAP)
    if args.repeats < 1 or args.duration <= 0:
        p.error("--repeats must be >= 1 and --duration > 0")
    return args


def estimate(args, solo_ms=None):
    """Seconds the runs should take (lead time + window + collection for every run), for the plan."""
    solo_ms = solo_ms or {"spin": args.spin_ms, "matmul": 3.0, "copy": 1.0}
    total = 0.0
    for _mode in args.modes:
        for workload in args.workloads:
            for n in args.ns:
                total += args.repeats * (lead_time(n, solo_ms.get(workload, 3.0)) + args.duration + 0.1)
    return total


def lead_time(n, solo_ms):
    """Seconds between sending a run and its start: every client's warm-up launch must fit, one at a time."""
    return 0.2 + 2.0 * n * solo_ms / 1000.0


def client_argv(args, backend, spin_blocks=0, spin_iters=0, sim_dir="", probe=False):
    argv = [args.python, "-u", CLIENT, "--backend", backend, "--device", str(args.device),
            "--workloads", ",".join(args.workloads), "--matmul-size", str(args.matmul_size),
            "--copy-mib", str(args.copy_mib)]
    if spin_blocks:
        argv += ["--spin-blocks", str(spin_blocks)]
    if spin_iters:
        argv += ["--spin-iters", str(spin_iters)]
    if backend == "sim":
        argv += ["--sim-sms", str(args.sim_sms), "--sim-ms", str(args.sim_ms), "--sim-dir", sim_dir]
        if args.sim_fail and not probe:
            argv += ["--sim-fail", args.sim_fail]
    if probe:
        argv += ["--probe", "--target-ms", str(args.spin_ms)]
    return argv


def client_env(pipe_dir):
    env = dict((k, v) for k, v in os.environ.items() if k not in CLIENT_ENV_DROP)
    env["CUDA_MPS_PIPE_DIRECTORY"] = pipe_dir
    env["PYTHONUNBUFFERED"] = "1"
    return env


def describe_workloads(args, probe):
    blocks = probe.get("spin_blocks")
    solo = probe.get("solo_ms", {})
    backend = probe.get("backend")
    info = {}
    if "spin" in args.workloads:
        if backend == "torch":
            text = ("compute-bound spin: torch.cuda._sleep, ONE block of one thread per launch (torch has no "
                    "kernel with a chosen block count), %.2f ms alone" % solo.get("spin", 0))
        else:
            text = ("compute-bound spin kernel: %d blocks x %d threads per launch, one block per SM (%s registers "
                    "per thread), %.2f ms alone" % (blocks, 1024, probe.get("spin_registers", "?"),
                                                    solo.get("spin", 0)))
        info["spin"] = {"blocks": blocks, "description": text, "unit": "launches", "unit_per_launch": None,
                        "label": "spin kernel (%d block%s per launch)" % (blocks, "" if blocks == 1 else "s")}
    if "matmul" in args.workloads:
        n = args.matmul_size
        info["matmul"] = {"blocks": None, "unit": "TFLOP/s", "unit_per_launch": 2.0 * n ** 3 / 1e12,
                          "label": "matmul %dx%d float32" % (n, n),
                          "fills": "one client already keeps every SM busy",
                          "description": "%dx%d float32 matmul (cuBLAS SGEMM), fills the GPU, %.2f ms alone"
                                         % (n, n, solo.get("matmul", 0))}
    if "copy" in args.workloads:
        moved = 4 * 2 * (args.copy_mib << 20)
        info["copy"] = {"blocks": None, "unit": "GB/s", "unit_per_launch": moved / 1e9,
                        "label": "memory-bound copy",
                        "fills": "one client already saturates memory bandwidth",
                        "description": "memory-bound y = 2x over %d MiB, 4 passes per launch (%.1f GB moved), "
                                       "saturates memory bandwidth, %.2f ms alone"
                                       % (args.copy_mib, moved / 1e9, solo.get("copy", 0))}
    return info


# --- main ---------------------------------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    say = Console()
    planned = estimate(args)
    runs_planned = len(args.modes) * len(args.workloads) * len(args.ns) * args.repeats
    say("plan: workloads %s; N %s; modes %s; %d repeats of %.2f s; %d runs, about %.0f s of runs plus client "
        "start-up (budget %.0f s, hard stop %.0f s)" % (",".join(args.workloads), ",".join(map(str, args.ns)),
                                                        ",".join(args.modes), args.repeats, args.duration,
                                                        runs_planned, planned, args.budget_s, args.deadline_s))
    if args.dry_run:
        say("daemon: %s" % ("the one in %s" % args.pipe_dir if args.pipe_dir else
                            "a private one, started with `%s -d` and quit at the end" % mps_out.CONTROL_BINARY))
        say("clients: %s" % " ".join(shlex.quote(a) for a in client_argv(args, args.backend)))
        say("dry run: nothing started")
        return 0
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        print("cannot create --out %s: %s" % (args.out, exc), file=sys.stderr)
        return 2

    state = {"runs": [], "checks": [], "problems": [], "probe": None, "daemon": None, "pools": [],
             "workdir": tempfile.mkdtemp(prefix="gpulab-mps-bench-"), "client": None, "env": {}}

    def on_signal(signum, _frame):
        raise Interrupted("signal %d" % signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, on_signal)
    signal.alarm(int(args.deadline_s))
    status = 0
    try:
        run_benchmark(args, say, state)
    except BenchError as exc:
        state["problems"].append(str(exc).splitlines()[0][:600])
        say("ERROR: %s" % exc)
        status = 2 if not state["runs"] else 1
    except Interrupted as exc:
        state["problems"].append("interrupted (%s): results are partial" % exc)
        say("INTERRUPTED (%s): cleaning up" % exc)
        status = 1
    except Exception as exc:  # a bug of this script: still clean up and write what was measured
        import traceback
        state["problems"].append("internal error: %s: %s" % (type(exc).__name__, exc))
        say("INTERNAL ERROR: %s" % traceback.format_exc())
        status = 1 if state["runs"] else 2
    finally:
        signal.alarm(0)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # cleanup is bounded (timeouts); let it finish
        cleanup(state, say)
    if state["problems"] and status == 0:
        status = 1
    if state["probe"] is None:
        write_log(args, say)
        print("\nnothing was measured:\n" + "\n".join("PROBLEM: " + p for p in state["problems"]), flush=True)
        return status or 2
    result = build_result(args, state)
    write_outputs(args, state, result, say)
    print("\n" + report.render_summary(result), flush=True)
    return status


def run_benchmark(args, say, state):
    workdir = state["workdir"]
    state["client"] = client_file()
    # The daemon of the "MPS on" mode: this script's own, or the one the caller runs.
    if args.pipe_dir:
        daemon = Daemon(args.pipe_dir, args.log_dir, False, say, control_binary=args.control_binary)
        say("MPS client: %s (%s)" % (MpsControl.__module__, daemon.binary))
        if not daemon.answers():
            raise BenchError("no MPS control daemon answers in %s (--pipe-dir): start it (gpulab.mps.mps_daemon, "
                             "state=started) or leave --pipe-dir out to let this script start its own"
                             % daemon.pipe_dir)
        others = sorted(set(p for clients in daemon.client_lists().values() for p in clients))
        if others:
            state["problems"].append("the daemon in %s already serves clients %s: they share the GPU with the "
                                     "benchmark" % (daemon.pipe_dir, others))
        say("using the MPS daemon that runs in %s" % daemon.pipe_dir)
    else:
        daemon = Daemon(os.path.join(workdir, "mps-pipe"), os.path.join(workdir, "mps-log"), True, say,
                        control_binary=args.control_binary, state_dir=os.path.join(workdir, "mps-state"))
        say("MPS client: %s (%s)" % (MpsControl.__module__, daemon.binary))
    state["daemon"] = daemon
    # MPS off: an empty directory that no daemon listens on, so the driver runs the client without MPS.
    no_mps = os.path.join(workdir, "no-mps-pipe")
    os.makedirs(no_mps, mode=0o700)
    sim_dir = os.path.join(workdir, "sim-gpu")

    before = nvml_processes()
    state["env"]["driver"] = before["driver"] if before else None
    state["env"]["other_gpu_processes_at_start"] = sorted(before["compute"]) if before else None
    if before and before["compute"]:
        state["problems"].append("the GPU was not idle at start: processes %s hold CUDA contexts"
                                 % sorted(before["compute"]))

    # Probe: one client alone, MPS off: device, SM count, backend, spin calibration, correctness.
    say("probe: device %d, backend %s (one client alone, MPS off)" % (args.device, args.backend))
    probe_client = Client(client_argv(args, args.backend, args.spin_blocks, sim_dir=sim_dir, probe=True),
                          client_env(no_mps), os.path.join(workdir, "probe.err"))
    try:
        probe = collect([probe_client], "probe", args.start_timeout)[0]
    finally:
        probe_client.close()
    bad = dict((k, v) for k, v in probe["checks"].items() if v != "ok")
    if bad:
        raise BenchError("the workloads compute wrong results on this GPU: %s" % bad)
    state["probe"] = probe
    dev = probe["device"]
    say("probe: %s, %d SMs, cc %s, backend %s%s; spin: %d blocks x 1024 threads, %s iterations, %s registers; "
        "alone: %s" % (dev["name"], dev["sm_count"], dev["compute_capability"], probe["backend"],
                       (" (not %s)" % "; ".join(probe["backend_errors"])) if probe.get("backend_errors") else "",
                       probe["spin_blocks"], probe.get("spin_iters"), probe.get("spin_registers", "?"),
                       ", ".join("%s %.2f ms" % kv for kv in sorted(probe["solo_ms"].items()))))
    if "spin" in args.workloads and probe["spin_blocks"] * args.ns[-1] <= dev["sm_count"]:
        say("note: %d clients x %d blocks do not fill %d SMs: saturation is not reached in this plan"
            % (args.ns[-1], probe["spin_blocks"], dev["sm_count"]))
    if daemon.own:
        # Started before the "MPS off" mode too, so that "not an MPS client" is checked against a live daemon.
        daemon.start()

    argv = client_argv(args, probe["backend"], probe["spin_blocks"], probe.get("spin_iters") or 0, sim_dir)
    begin = time.time()
    total_runs = len(args.modes) * len(args.workloads) * len(args.ns) * args.repeats
    for index, mode in enumerate(args.modes):
        # This mode may use an equal share of what is left of the budget.
        share = (args.budget_s - (time.time() - say.t0)) / (len(args.modes) - index)
        run_mode(args, say, state, mode, daemon, argv, no_mps, share, total_runs)
    say("runs done in %.1f s" % (time.time() - begin))


def start_pool(args, say, state, mode, daemon, argv, no_mps):
    """A ready pool whose clients passed the membership check, or None (the check failed, recorded)."""
    want_mps = mode == "mps"
    pipe = daemon.pipe_dir if want_mps else no_mps
    size = args.ns[-1]
    say("mode %s: starting %d clients (CUDA_MPS_PIPE_DIRECTORY=%s)" % (report.MODE_NAMES[mode], size, pipe))
    pool = Pool(mode, size, argv, client_env(pipe), state["workdir"], say)
    state["pools"].append(pool)
    t_pool = time.time()
    pool.start(args.start_timeout)
    say("mode %s: %d clients ready in %.1f s (pids %s)" % (mode, size, time.time() - t_pool,
                                                           " ".join(str(p) for p in pool.pids())))
    membership = check_membership(mode, pool.pids(), daemon, want_mps, say, no_mps, wait=args.ps_wait)
    state["checks"].append(membership)
    say("check: " + membership["line"])
    if membership.get("witness_disagrees"):
        state["problems"].append(membership["witness_disagrees"])
        say("WARNING: " + membership["witness_disagrees"])
    if membership["ok"]:
        return pool
    for problem in membership["problems"]:
        state["problems"].append(problem)
        say("FAILED: " + problem)
    say("mode %s is not measured: its clients are not what the mode claims" % mode)
    pool.close()
    state["pools"].remove(pool)
    return None


def run_mode(args, say, state, mode, daemon, argv, no_mps, share, total_runs):
    probe = state["probe"]
    pool = start_pool(args, say, state, mode, daemon, argv, no_mps)
    if pool is None:
        return
    mode_start, failures = time.time(), 0
    per_repeat = estimate_repeat(args, probe)
    for rep in range(1, args.repeats + 1):
        if rep > 1 and (time.time() - mode_start) + per_repeat > share:
            msg = ("budget: mode %s stopped after %d of %d repeats (--budget-s %.0f)"
                   % (mode, rep - 1, args.repeats, args.budget_s))
            state["problems"].append(msg)
            say(msg)
            break
        for workload in args.workloads:
            solo = probe["solo_ms"].get(workload, 3.0)
            for n in args.ns:
                record = {"workload": workload, "mode": mode, "n": n, "repeat": rep, "result": None}
                state["runs"].append(record)
                try:
                    reports = pool.run(workload, n, args.duration, lead_time(n, solo),
                                       timeout=args.run_timeout + 40.0 * n * solo / 1000.0)
                except BenchError as exc:
                    failures += 1
                    record["error"] = str(exc)[:600]
                    state["problems"].append("%s N=%d %s repeat %d failed: %s" % (
                        workload, n, mode, rep, str(exc).splitlines()[0][:300]))
                    say("FAILED %s N=%d %s: %s" % (workload, n, mode, exc))
                    pool.close(grace=2.0)  # its clients may be hung: no long wait for a clean exit
                    state["pools"].remove(pool)
                    if failures >= 2:
                        state["problems"].append("mode %s abandoned after %d failed runs" % (mode, failures))
                        say("mode %s abandoned after %d failed runs" % (mode, failures))
                        return
                    say("restarting the %s clients" % mode)
                    pool = start_pool(args, say, state, mode, daemon, argv, no_mps)
                    if pool is None:
                        return
                    continue
                result = report.aggregate_run(reports, args.duration)
                record["result"] = result
                record["clients"] = [{"pid": r["pid"], "count": r["count"], "check": r["check"],
                                      "start_delay_ms": r["start_delay_ms"],
                                      "latency_p50_ms": report.median(r["latency_ms"]) if r["latency_ms"] else None}
                                     for r in reports]
                if result["checks_failed"]:
                    state["problems"].append("%s N=%d %s: wrong results from clients %s" % (
                        workload, n, mode, result["checks_failed"]))
                base = next((r["result"]["throughput"] for r in state["runs"] if r["workload"] == workload
                             and r["mode"] == mode and r["n"] == 1 and r.get("result")), None)
                say("[%d/%d] %-6s N=%-2d %-3s rep %d: %9.1f launches/s%s, p50 %.2f ms, worst client %.2f ms%s" % (
                    len(state["runs"]), total_runs, workload, n, mode, rep, result["throughput"],
                    (" (x%.2f of N=1)" % (result["throughput"] / base)) if base else "",
                    result["latency_p50_ms"] or 0, result["latency_worst_client_ms"] or 0,
                    "" if not result["checks_failed"] else " WRONG RESULTS"))
    final = check_membership(mode, pool.pids(), daemon, mode == "mps", say, no_mps, wait=2.0, when="end")
    state["checks"].append(final)
    say("check at the end: " + final["line"])
    if not final["ok"]:
        state["problems"].extend(final["problems"])
    pool.close()
    state["pools"].remove(pool)


def estimate_repeat(args, probe):
    total = 0.0
    for workload in args.workloads:
        for n in args.ns:
            total += lead_time(n, probe["solo_ms"].get(workload, 3.0)) + args.duration + 0.1
    return total


def cleanup(state, say):
    """Always: stop every client this script started, then its own daemon; remove the private folders."""
    for pool in list(state["pools"]):
        pool.close()
    state["pools"] = []
    daemon = state.get("daemon")
    if daemon is not None and daemon.own:
        if daemon.pid or daemon.control.daemon_pid():
            try:
                daemon.stop()
            except BenchError as exc:
                state["problems"].append(str(exc))
                say("WARNING: %s" % exc)
        state["logs"] = {"control": daemon.log_tail("control.log", 200000),
                         "server": daemon.log_tail("server.log", 200000)}
    shutil.rmtree(state["workdir"], ignore_errors=True)


def build_result(args, state):
    probe = state["probe"]
    dev = probe["device"]
    workloads = describe_workloads(args, probe)
    summary = report.summarize(state["runs"])
    rows = report.compare(summary, workloads, dev["sm_count"])
    # A mode that failed its check has no runs: its rows show "-" and the verdicts say "not measured".
    env = {
        "gpu_name": dev["name"], "sm_count": dev["sm_count"], "compute_capability": dev["compute_capability"],
        "memory_total_mib": dev.get("memory_total_mib"), "backend": probe["backend"],
        "backend_versions": dict((k, dev[k]) for k in ("cupy", "torch") if k in dev),
        "driver": state["env"].get("driver"), "host": socket.gethostname(), "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
        "command": " ".join(shlex.quote(a) for a in ["python3", "benchmarks/mps_benchmark.py"] + sys.argv[1:]),
        "mps_client": state["client"], "other_gpu_processes_at_start": state["env"].get(
            "other_gpu_processes_at_start"),
        "daemon": None if state["daemon"] is None else {
            "pipe_directory": state["daemon"].pipe_dir, "own": state["daemon"].own, "pid": state["daemon"].pid},
    }
    return {
        "schema": "gpulab.mps/benchmark/1",
        "environment": env,
        "config": {"ns": args.ns, "workloads": args.workloads, "modes": args.modes, "repeats": args.repeats,
                   "duration_s": args.duration, "spin_blocks": probe.get("spin_blocks"),
                   "spin_iters": probe.get("spin_iters"), "spin_registers": probe.get("spin_registers"),
                   "matmul_size": args.matmul_size, "copy_mib": args.copy_mib, "quick": args.quick},
        "probe": probe,
        "workloads": workloads,
        "rows": rows,
        "verdicts": report.verdicts(rows, workloads, dev["sm_count"]),
        "checks": state["checks"],
        "check_lines": [c["line"] for c in state["checks"] if c["when"] == "start"],
        "problems": state["problems"],
        "notes": [],
        "summary": [dict(zip(("workload", "mode", "n"), k), **v) for k, v in sorted(summary.items())],
        "runs": state["runs"],
    }


def write_log(args, say):
    try:
        with open(os.path.join(args.out, "mps_benchmark.log"), "w") as handle:
            handle.write("\n".join(say.lines) + "\n")
    except OSError:
        pass


def write_outputs(args, state, result, say):
    out = args.out
    try:
        why = report.plot(result, os.path.join(out, "mps_benchmark.png"))
    except Exception as exc:  # the plot is the least of the outputs: never lose the others to it
        why = "plotting failed: %s: %s" % (type(exc).__name__, exc)
    if why:
        result["notes"].append("PNG not written: %s" % why)
        say("PNG not written: %s" % why)
    with open(os.path.join(out, "mps_benchmark.json"), "w") as handle:
        json.dump(result, handle, indent=1, sort_keys=True, default=str)
    with open(os.path.join(out, "mps_benchmark.md"), "w") as handle:
        handle.write(report.render_markdown(result))
    logs = state.get("logs") or {}
    if any(logs.values()):
        # One file for both logs of the script's own daemon: few files come back from a remote run.
        with open(os.path.join(out, "mps_daemon.log"), "w") as handle:
            for name in ("control", "server"):
                handle.write("==> %s.log <==\n%s\n\n" % (name, logs.get(name) or "(empty)"))
    say("wrote %s" % ", ".join(sorted(os.listdir(out))))
    write_log(args, say)


if __name__ == "__main__":
    sys.exit(main())
