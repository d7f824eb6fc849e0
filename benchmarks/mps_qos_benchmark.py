# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Noisy neighbours on a shared GPU, measured: a latency client beside 0, 3 and 7 clients that fill the GPU.

    PYTHONUNBUFFERED=1 python3 benchmarks/mps_qos_benchmark.py --qos-dir /etc/gpulab-mps/qos --out OUT
    python3 benchmarks/mps_qos_benchmark.py --dry-run                       (the plan; touches nothing)

The latency client launches small kernels (16 blocks x 1024 threads, calibrated to about 0.24 ms alone) and waits
for each, as a latency-critical service does; each neighbour launches a kernel with one block per SM (calibrated to
about 2 ms alone), back to back. Both are the spin kernel of the MPS benchmark (mps_bench_client.py), with the
sizes of their own. Modes (--modes, in this order):
- ts: MPS off (every client gets an empty pipe directory: time-slicing), proven NOT to be MPS clients;
- mps: MPS with no limits (what a lab without QoS gives);
- prio / threads: MPS, the neighbours at only the batch class's priority / only its thread limit (what each half
  of the class does);
- qos: MPS, the latency client in the latency class and the neighbours in the batch class.
The classes are read from the files the collection installs on the host (role mps_host: --qos-dir/<class>.env);
only their CUDA_MPS_ACTIVE_THREAD_PERCENTAGE, CUDA_MPS_CLIENT_PRIORITY and CUDA_MPS_PINNED_DEVICE_MEM_LIMIT are used
(the pipe directory is the benchmark's daemon's). Every MPS-mode client must be in the daemon's `ps` (parsed by the
collection's _mps_output.py), and every client reports what it got (SM count, the SMs a probe kernel's blocks ran
on, free memory), beside what its server log and the daemon say. The machinery (daemon, client processes, the
membership proof) is mps_benchmark.py's.

It reports the latency client's p50/p99/max per mode and number of neighbours, the ratio to alone, the neighbours'
throughput and its ratio to no limits, and the criterion: in mode qos beside the most neighbours, the latency p99 is
at most --criterion (1.2) x its best p99 alone. Output in --out: mps_qos.json, mps_qos.md, mps_qos.png, mps_qos.log,
mps_daemon.log (its own daemon). Exit status: 0 measured, every check and the criterion passed; 1 a check, a run or
the criterion failed (what was measured is still written); 2 it could not start.
It never changes compute mode, clocks, power, persistence or MIG, and stops every process and daemon it started.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import signal
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mps_benchmark as bench  # noqa: E402  (beside this file: the daemon, the clients, the membership proof)
import mps_qos_report as report  # noqa: E402

mps_out = bench.mps_out
MpsControlError = bench.MpsControlError
CLASS_VARIABLES = ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "CUDA_MPS_CLIENT_PRIORITY", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT")
_ENV_LINE_RE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>[^\s'\"]*)$")
CLASS_MODES = ("prio", "threads", "qos")


# --- the classes, as the host has them ----------------------------------------------------------------------

def read_env_file(path):
    """{VARIABLE: value} of a class file written by the role mps_host (NAME=value lines, # comments)."""
    env = {}
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            match = _ENV_LINE_RE.match(line)
            if not match:
                raise bench.BenchError("%s line %d is not NAME=value: %r (is it a class file of gpulab.mps?)"
                                       % (path, number, line[:120]))
            env[match.group("name")] = match.group("value")
    return env


def load_classes(directory, names):
    """{name: {"path", "environment" (the class's MPS variables), "pipe_directory" (what the file names)}}."""
    classes = {}
    for name in names:
        path = os.path.join(directory, "%s.env" % name)
        if not os.path.isfile(path):
            raise bench.BenchError("no class file %s: install the QoS classes (site.yml --tags host, role "
                                   "gpulab.mps.mps_host, writes gpulab_mps_qos_directory/<class>.env) or pass --qos-dir"
                                   % path)
        env = read_env_file(path)
        classes[name] = {"path": path, "pipe_directory": env.get("CUDA_MPS_PIPE_DIRECTORY"),
                         "environment": dict((k, v) for k, v in env.items() if k in CLASS_VARIABLES)}
    return classes


def mode_environment(mode, classes, args):
    """(latency client's extra env, each neighbour's extra env, their class names) for one mode."""
    if mode not in CLASS_MODES:
        return {}, {}, (None, None)
    latency = dict(classes[args.latency_class]["environment"])
    batch = dict(classes[args.batch_class]["environment"])
    if mode == "qos":
        return latency, batch, (args.latency_class, args.batch_class)
    key = "CUDA_MPS_CLIENT_PRIORITY" if mode == "prio" else "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
    if key not in batch:
        raise bench.BenchError("mode %s needs %s in class %s (%s): it sets %s" % (
            mode, key, args.batch_class, classes[args.batch_class]["path"], ", ".join(sorted(batch)) or "nothing"))
    return {}, {key: batch[key]}, (None, "%s (%s only)" % (args.batch_class, key))


# --- the clients ----------------------------------------------------------------------------------------------

def client_argv(args, backend, workloads, probe_result=None, sim_dir="", probe=False):
    kernels = (probe_result or {}).get("kernels") or {}
    sms = (probe_result or {}).get("device", {}).get("sm_count")
    argv = [args.python, "-u", bench.CLIENT, "--backend", backend, "--device", str(args.device),
            "--workloads", workloads, "--latency-blocks", str(args.latency_blocks),
            "--fill-blocks", str(args.fill_blocks or sms or 0),
            # torch's fill is the matmul; the CuPy clients need no big matmul or copy buffers.
            "--matmul-size", "4096" if backend == "torch" else "256", "--copy-mib", "16"]
    for name, option in (("latency", "--latency-iters"), ("fill", "--fill-iters")):
        if kernels.get(name):
            argv += [option, str(kernels[name]["iters"])]
    if backend == "sim":
        argv += ["--sim-sms", str(args.sim_sms), "--sim-latency-ms", str(args.sim_latency_ms), "--sim-fill-ms",
                 str(args.sim_fill_ms), "--sim-dir", sim_dir]
    if probe:
        argv += ["--probe", "--calibrate", "latency=%s,fill=%s" % (args.latency_ms, args.fill_ms)]
    return argv


def client_env(pipe_dir, extra):
    env = bench.client_env(pipe_dir)  # no CUDA_MPS_* of the caller's: the mode decides them all
    env.update(extra)
    return env


class QosPool(object):
    """One latency client and max(N) neighbours of one mode, kept for all its runs."""

    def __init__(self, mode, size, argvs, envs, workdir, say):
        self.mode, self.size, self.argvs, self.envs, self.workdir, self.say = mode, size, argvs, envs, workdir, say
        self.clients = []

    def start(self, timeout):
        roles = [("latency", "latency")] + [("fill", "neighbour%d" % i) for i in range(1, self.size + 1)]
        for kind, role in roles:
            path = os.path.join(self.workdir, "%s-%s.err" % (self.mode, role))
            client = bench.Client(self.argvs[kind], self.envs[kind], path)
            client.role = role
            self.clients.append(client)
        ready = bench.collect(self.clients, "ready", timeout)
        bad = dict((r["pid"], r["checks"]) for r in ready if any(v != "ok" for v in r["checks"].values()))
        if bad:
            raise bench.BenchError("%s clients failed their warm-up checks: %s" % (self.mode, bad))
        return ready

    def pids(self):
        return [c.pid for c in self.clients]

    def inspect(self, timeout):
        """Each client's own report of what it got, one client at a time (the others idle)."""
        seen = []
        for client in self.clients:
            if not client.send({"cmd": "inspect"}):
                raise bench.BenchError("client %d no longer takes commands: %s" % (client.pid, client.stderr_tail()))
            answer = bench.collect([client], "inspect", timeout)[0]
            answer["role"] = client.role
            seen.append(answer)
        return seen

    def run(self, n, duration, lead, timeout):
        start_at = time.time() + lead
        active = self.clients[:n + 1]
        for client in active:
            workload = "latency" if client is self.clients[0] else "fill"
            if not client.send({"cmd": "run", "workload": workload, "start_at": start_at, "duration": duration,
                                "warmup": 1}):
                raise bench.BenchError("client %d no longer takes commands (exit %s): %s" % (
                    client.pid, client.proc.poll(), client.stderr_tail()))
        return bench.collect(active, "result", lead + duration + timeout)

    def close(self, grace=10.0):
        left = bench.stop_clients(self.clients, grace)
        if left:
            self.say("WARNING: clients still alive after SIGKILL: %s" % left)
        self.clients = []


# --- the plan -------------------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description="Noisy neighbours under MPS: a latency client beside clients that fill "
                                            "the GPU, with time-slicing, MPS without limits and MPS with QoS classes.")
    p.add_argument("--out", default="mps_qos_out", help="folder for the JSON, markdown, PNG and logs")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit; touches nothing")
    p.add_argument("--ns", default="0,3,7", help="numbers of neighbours, comma-separated; 0 is the client alone")
    p.add_argument("--modes", default="ts,mps,qos", help="of ts, mps, prio, threads, qos (in this order)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--duration", type=float, default=2.0, help="seconds each run measures")
    p.add_argument("--qos-dir", default="/etc/gpulab-mps/qos", help="the host's class files (<class>.env)")
    p.add_argument("--latency-class", default="latency")
    p.add_argument("--batch-class", default="batch")
    p.add_argument("--latency-blocks", type=int, default=16, help="blocks per launch of the latency client")
    p.add_argument("--latency-ms", type=float, default=0.24, help="its launch alone (calibrated)")
    p.add_argument("--fill-blocks", type=int, default=0, help="blocks per neighbour launch (0: the SM count)")
    p.add_argument("--fill-ms", type=float, default=2.0, help="a neighbour launch alone (calibrated)")
    p.add_argument("--criterion", type=float, default=1.2,
                   help="qos beside the most neighbours: p99 at most this x the best p99 alone (0: no criterion)")
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--backend", default="auto", choices=["auto", "cupy", "torch", "sim"])
    p.add_argument("--python", default=sys.executable, help="interpreter for the clients (needs cupy or torch)")
    p.add_argument("--pipe-dir", help="use the MPS daemon already running there (else start a private one)")
    p.add_argument("--log-dir", help="with --pipe-dir: that daemon's log directory (server.log, for the evidence)")
    p.add_argument("--control-binary", help="path of nvidia-cuda-mps-control (default: root's and NVIDIA's directories, "
                                            "as the collection's find_control_binary looks; never PATH)")
    p.add_argument("--lib", help="a directory holding ansible_collections/gpulab/mps (the collection's client); default: "
                                 "the checkout this script belongs to")
    p.add_argument("--budget-s", type=float, default=200.0, help="stop adding repeats past this many seconds")
    p.add_argument("--deadline-s", type=float, help="hard stop: clean up and report (default budget + 120)")
    p.add_argument("--start-timeout", type=float, default=180.0, help="seconds for a pool of clients to be ready")
    p.add_argument("--ps-wait", type=float, default=10.0)
    p.add_argument("--run-timeout", type=float, default=60.0)
    p.add_argument("--sim-sms", type=int, default=132, help=argparse.SUPPRESS)
    p.add_argument("--sim-latency-ms", type=float, default=0.3, help=argparse.SUPPRESS)
    p.add_argument("--sim-fill-ms", type=float, default=2.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.ns = sorted(set(int(n) for n in args.ns.split(",") if n.strip()))
    except ValueError:
        p.error("--ns takes whole numbers, e.g. 0,3,7")
    given = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in given if m not in report.MODES]
    args.modes = [m for m in report.MODES if m in given]  # always in the order of report.MODES
    if unknown or not args.modes:
        p.error("--modes takes ts, mps, prio, threads and/or qos (got %s)" % (", ".join(unknown) or "none"))
    if not args.ns or args.ns[0] < 0 or args.ns[-1] + 1 > bench.MPS_CLIENT_CAP:
        p.error("--ns must be between 0 and %d neighbours" % (bench.MPS_CLIENT_CAP - 1))
    if args.repeats < 1 or args.duration <= 0 or args.latency_blocks < 1 or args.latency_ms <= 0 or args.fill_ms <= 0:
        p.error("--repeats, --duration, --latency-blocks, --latency-ms and --fill-ms must be positive")
    args.deadline_s = args.deadline_s or args.budget_s + 120.0
    return args


def lead_time(args, n, fill_ms):
    """Seconds between sending a run and its start: every client's warm-up launch must fit, even limited ones."""
    return 0.4 + 0.02 * (n + 1) * max(fill_ms, args.latency_ms)


def estimate(args, fill_ms=None):
    fill_ms = fill_ms or args.fill_ms
    return sum(args.repeats * (lead_time(args, n, fill_ms) + args.duration + 0.2) for n in args.ns) * len(args.modes)


# --- main -----------------------------------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    say = bench.Console()
    runs = len(args.modes) * len(args.ns) * args.repeats
    say("plan: modes %s; neighbours %s; %d repeats of %.2f s; %d runs, about %.0f s of runs plus client start-up "
        "(budget %.0f s, hard stop %.0f s)" % (",".join(args.modes), ",".join(map(str, args.ns)), args.repeats,
                                               args.duration, runs, estimate(args), args.budget_s, args.deadline_s))
    if args.dry_run:
        say("classes: %s" % ("%s/%s.env and %s/%s.env" % (args.qos_dir, args.latency_class, args.qos_dir,
                                                          args.batch_class) if set(args.modes) & set(CLASS_MODES)
                             else "none (no mode needs them)"))
        say("daemon: %s" % ("the one in %s" % args.pipe_dir if args.pipe_dir else
                            "a private one, started with `%s -d` and quit at the end" % mps_out.CONTROL_BINARY))
        say("clients: %s" % " ".join(shlex.quote(a) for a in client_argv(args, args.backend, "latency")))
        say("dry run: nothing started")
        return 0
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        print("cannot create --out %s: %s" % (args.out, exc), file=sys.stderr)
        return 2
    state = {"runs": [], "checks": [], "problems": [], "notes": [], "probe": None, "daemon": None, "pools": [],
             "workdir": tempfile.mkdtemp(prefix="gpulab-mps-qos-"), "client": bench.client_file(), "env": {},
             "evidence": [], "daemon_evidence": [], "classes": {}, "pids": {}}

    def on_signal(signum, _frame):
        raise bench.Interrupted("signal %d" % signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, on_signal)
    signal.alarm(int(args.deadline_s))
    status = 0
    try:
        run_benchmark(args, say, state)
    except bench.BenchError as exc:
        state["problems"].append(str(exc).splitlines()[0][:600])
        say("ERROR: %s" % exc)
        status = 2 if not state["runs"] else 1
    except bench.Interrupted as exc:
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
        server_log = given_server_log(args, state)
        bench.cleanup(state, say)
    if state["probe"] is None:
        write_log(args, say)
        print("\nnothing was measured:\n" + "\n".join("PROBLEM: " + p for p in state["problems"]), flush=True)
        return status or 2
    result = build_result(args, state, server_log or (state.get("logs") or {}).get("server") or "")
    if result["criterion"]["passed"] is False:
        state["problems"].append(report.criterion_line(result["criterion"]))
    write_outputs(args, state, result, say)
    print("\n" + report.render_summary(result), flush=True)
    if state["problems"] and status == 0:
        status = 1
    return status


def given_server_log(args, state):
    """server.log of the daemon given with --pipe-dir/--log-dir, read through the client (this script's own daemon's
    is read at its cleanup)."""
    daemon = state.get("daemon")
    if not (args.pipe_dir and args.log_dir) or daemon is None or daemon.own:
        return None
    return daemon.control.read_log("server.log") or None


def run_benchmark(args, say, state):
    workdir = state["workdir"]
    say("MPS client: %s" % state["client"])
    if set(args.modes) & set(CLASS_MODES):
        state["classes"] = load_classes(args.qos_dir, [args.latency_class, args.batch_class])
        for name, cls in sorted(state["classes"].items()):
            say("class %s (%s): %s" % (name, cls["path"], " ".join("%s=%s" % kv for kv in sorted(
                cls["environment"].items())) or "no MPS variable"))
        for mode in args.modes:
            mode_environment(mode, state["classes"], args)  # refuse a mode the classes cannot make, before anything
    if args.pipe_dir:
        daemon = bench.Daemon(args.pipe_dir, args.log_dir, False, say, control_binary=args.control_binary)
        if not daemon.answers():
            raise bench.BenchError("no MPS control daemon answers in %s (--pipe-dir): start it (gpulab.mps.mps_daemon, "
                                   "state=started) or leave --pipe-dir out" % daemon.pipe_dir)
        others = sorted(set(p for clients in daemon.client_lists().values() for p in clients))
        if others:
            state["problems"].append("the daemon in %s already serves clients %s: they share the GPU with the "
                                     "benchmark" % (daemon.pipe_dir, others))
        say("using the MPS daemon that runs in %s" % daemon.pipe_dir)
    else:
        daemon = bench.Daemon(os.path.join(workdir, "mps-pipe"), os.path.join(workdir, "mps-log"), True, say,
                              control_binary=args.control_binary, state_dir=os.path.join(workdir, "mps-state"))
    state["daemon"] = daemon
    for name, cls in state["classes"].items():
        if cls["pipe_directory"] and cls["pipe_directory"] != daemon.pipe_dir:
            state["notes"].append("class %s names pipe directory %s (the host daemon's); the benchmark's clients use "
                                  "%s, with the class's MPS variables" % (name, cls["pipe_directory"], daemon.pipe_dir))
    no_mps = os.path.join(workdir, "no-mps-pipe")
    os.makedirs(no_mps, mode=0o700)
    sim_dir = os.path.join(workdir, "sim-gpu")

    before = bench.nvml_processes()
    state["env"]["driver"] = before["driver"] if before else None
    if before and before["compute"]:
        state["problems"].append("the GPU was not idle at start: processes %s hold CUDA contexts"
                                 % sorted(before["compute"]))
    say("probe: device %d, backend %s (one client alone, MPS off)" % (args.device, args.backend))
    probe_client = bench.Client(client_argv(args, args.backend, "latency,fill", sim_dir=sim_dir, probe=True),
                                client_env(no_mps, {}), os.path.join(workdir, "probe.err"))
    try:
        probe = bench.collect([probe_client], "probe", args.start_timeout)[0]
    finally:
        probe_client.close()
    bad = dict((k, v) for k, v in probe["checks"].items() if v != "ok")
    if bad:
        raise bench.BenchError("the kernels compute wrong results on this GPU: %s" % bad)
    state["probe"] = probe
    dev = probe["device"]
    say("probe: %s, %d SMs, backend %s; latency kernel %s blocks, %.3f ms alone; fill kernel %s blocks, %.3f ms alone"
        % (dev["name"], dev["sm_count"], probe["backend"], probe["kernels"]["latency"]["blocks"],
           probe["solo_ms"]["latency"], probe["kernels"]["fill"]["blocks"], probe["solo_ms"]["fill"]))
    if daemon.own:
        daemon.start()  # before the MPS-off mode too: "not an MPS client" is checked against a live daemon
    for index, mode in enumerate(args.modes):
        share = (args.budget_s - (time.time() - say.t0)) / (len(args.modes) - index)
        run_mode(args, say, state, mode, daemon, no_mps, sim_dir, share)


def daemon_facts(daemon):
    """What the daemon says of its defaults and servers: sentences, each asked through the collection's client."""
    control = daemon.control

    def ask(call, *arguments):
        try:
            return call(*arguments)
        except MpsControlError as exc:
            return "unreadable (%s)" % str(exc).splitlines()[0][:200]

    lines = ["default active thread percentage: %s" % ask(control.default_active_thread_percentage),
             "default client priority: %s" % ask(control.query, "get_default_client_priority",
                                                 mps_out.parse_client_priority)]
    try:
        servers = control.server_list()
    except MpsControlError as exc:
        servers = []
        lines.append("servers: unreadable (%s)" % str(exc).splitlines()[0][:200])
    for server in servers:
        lines.append("server %d: active thread percentage %s" % (server, ask(control.active_thread_percentage, server)))
    return lines


def run_mode(args, say, state, mode, daemon, no_mps, sim_dir, share):
    probe = state["probe"]
    want_mps = mode != "ts"
    pipe = daemon.pipe_dir if want_mps else no_mps
    latency_env, fill_env, classes = mode_environment(mode, state["classes"], args)
    size = max(args.ns)
    argvs = {"latency": client_argv(args, probe["backend"], "latency", probe, sim_dir),
             "fill": client_argv(args, probe["backend"], "fill", probe, sim_dir)}
    envs = {"latency": client_env(pipe, latency_env), "fill": client_env(pipe, fill_env)}
    say("mode %s (%s): 1 latency client%s, %d neighbours%s (CUDA_MPS_PIPE_DIRECTORY=%s)" % (
        mode, report.MODE_NAMES[mode], " in class %s" % classes[0] if classes[0] else "", size,
        " in class %s" % classes[1] if classes[1] else "", pipe))
    pool = QosPool(mode, size, argvs, envs, state["workdir"], say)
    state["pools"].append(pool)
    started = time.time()
    try:
        pool.start(args.start_timeout)
    except bench.BenchError as exc:
        state["problems"].append("mode %s: clients did not start: %s" % (mode, str(exc).splitlines()[0][:400]))
        say("FAILED: mode %s: %s" % (mode, exc))
        pool.close(grace=2.0)
        state["pools"].remove(pool)
        return
    say("mode %s: %d clients ready in %.1f s (latency %d, neighbours %s)" % (
        mode, size + 1, time.time() - started, pool.pids()[0], " ".join(str(p) for p in pool.pids()[1:])))
    state["pids"][mode] = pool.pids()
    membership = bench.check_membership(mode, pool.pids(), daemon, want_mps, say, no_mps, wait=args.ps_wait)
    state["checks"].append(membership)
    say("check: " + membership["line"])
    if membership.get("witness_disagrees"):
        state["problems"].append(membership["witness_disagrees"])
    if not membership["ok"]:
        state["problems"].extend(membership["problems"])
        say("mode %s is not measured: its clients are not what the mode claims" % mode)
        pool.close()
        state["pools"].remove(pool)
        return
    for seen in pool.inspect(args.run_timeout):
        ok, line = report.class_check(seen, probe["device"]["sm_count"])
        seen.update(mode=mode, class_ok=ok, class_line=line,
                    **{"class": classes[0] if seen["role"] == "latency" else classes[1]})
        state["evidence"].append(seen)
        say("client %s %d: %s; %s" % (seen["role"], seen["pid"], " ".join(
            "%s=%s" % (k, v) for k, v in sorted(seen["mps_env"].items()) if k != "CUDA_MPS_PIPE_DIRECTORY") or
            "no class variable", line))
        if not ok:
            state["problems"].append("mode %s, %s %d did not get its class: %s" % (mode, seen["role"], seen["pid"], line))
    if want_mps:
        for line in daemon_facts(daemon):
            state["daemon_evidence"].append("mode %s: %s" % (mode, line))
    fill_ms = probe["solo_ms"]["fill"]
    mode_start, failures = time.time(), 0
    per_repeat = sum(lead_time(args, n, fill_ms) + args.duration + 0.2 for n in args.ns)
    for rep in range(1, args.repeats + 1):
        if rep > 1 and (time.time() - mode_start) + per_repeat > share:
            msg = "budget: mode %s stopped after %d of %d repeats (--budget-s %.0f)" % (
                mode, rep - 1, args.repeats, args.budget_s)
            state["notes"].append(msg)
            say(msg)
            break
        for n in args.ns:
            record = {"mode": mode, "n": n, "repeat": rep, "result": None}
            state["runs"].append(record)
            try:
                reports = pool.run(n, args.duration, lead_time(args, n, fill_ms), args.run_timeout)
            except bench.BenchError as exc:
                failures += 1
                record["error"] = str(exc)[:600]
                first = str(exc).splitlines()[0][:300]
                state["problems"].append("mode %s N=%d repeat %d failed: %s" % (mode, n, rep, first))
                say("FAILED mode %s N=%d: %s" % (mode, n, exc))
                if failures >= 2:
                    state["problems"].append("mode %s abandoned after %d failed runs" % (mode, failures))
                    pool.close(grace=2.0)
                    state["pools"].remove(pool)
                    return
                continue
            record["latency_ms"] = reports[0]["latency_ms"]
            record["result"] = report.aggregate_run(reports[0], reports[1:], args.duration, fill_ms)
            lat = record["result"]["latency"] or {}
            if record["result"]["checks_failed"]:
                state["problems"].append("mode %s N=%d: wrong results from clients %s" % (
                    mode, n, record["result"]["checks_failed"]))
            say("[%s N=%d rep %d] latency p50 %s p99 %s max %s ms (%s launches); neighbours %.1f launches/s" % (
                mode, n, rep, report._fmt(lat.get("p50_ms"), 3), report._fmt(lat.get("p99_ms"), 3),
                report._fmt(lat.get("max_ms"), 3), lat.get("count", 0), record["result"]["neighbour_throughput"]))
    final = bench.check_membership(mode, pool.pids(), daemon, want_mps, say, no_mps, wait=2.0, when="end")
    state["checks"].append(final)
    say("check at the end: " + final["line"])
    if not final["ok"]:
        state["problems"].extend(final["problems"])
    pool.close()
    state["pools"].remove(pool)


def server_log_evidence(state, text):
    """Per client: what its server logged about it (as written), and what each server logged of itself."""
    if not text:
        return
    pids = [p for pids in state["pids"].values() for p in pids]
    entries = mps_out.client_log_entries(text, pids)
    servers = mps_out.parse_server_log(text)
    for item in state["evidence"]:
        mine = entries.get(item["pid"]) or []
        item["server_log"] = [e["message"] for e in mine][:12]
        item["server"] = mine[0]["server"] if mine else None
    for pid, server in sorted(servers.items()):
        state["daemon_evidence"].append("server.log: server %d started with active thread percentage %s, server "
                                        "priority %s, pinned limits %s" % (
                                            pid, server["active_thread_percentage"], server["priority"],
                                            server["pinned_memory_limit"] or "none"))
    for line in sorted(set(e["message"] for es in entries.values() for e in es)):
        if re.search(r"(?i)priorit|percent|limit", line):
            state["daemon_evidence"].append("server.log about a client: %s" % line)


def build_result(args, state, server_log):
    probe = state["probe"]
    dev = probe["device"]
    fill_ms = probe["solo_ms"].get("fill")
    server_log_evidence(state, server_log)
    table = report.rows(state["runs"], args.ns, args.modes, fill_ms)
    crit = report.criterion(table, args.criterion) if args.criterion > 0 and "qos" in args.modes else {
        "mode": "qos", "limit": args.criterion, "n": None, "p99_ms": None, "alone_p99_ms": None, "ratio": None,
        "passed": None}
    daemon = state["daemon"]
    env = {
        "gpu_name": dev["name"], "sm_count": dev["sm_count"], "compute_capability": dev.get("compute_capability"),
        "memory_total_mib": dev.get("memory_total_mib"), "backend": probe["backend"], "driver": state["env"].get("driver"),
        "host": socket.gethostname(), "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
        "command": " ".join(shlex.quote(a) for a in ["python3", "benchmarks/mps_qos_benchmark.py"] + sys.argv[1:]),
        "mps_client": state["client"],
        "daemon": None if daemon is None else {"pipe_directory": daemon.pipe_dir, "own": daemon.own, "pid": daemon.pid},
    }
    runs = [dict((k, v) for k, v in r.items() if k != "latency_ms") for r in state["runs"]]
    return {
        "schema": "gpulab.mps/qos-benchmark/1",
        "environment": env,
        "config": {"ns": args.ns, "modes": args.modes, "repeats": args.repeats, "duration_s": args.duration,
                   "latency_blocks": probe["kernels"]["latency"]["blocks"], "fill_blocks": probe["kernels"]["fill"]["blocks"],
                   "latency_solo_ms": probe["solo_ms"].get("latency"), "fill_solo_ms": fill_ms,
                   "latency_class": args.latency_class, "batch_class": args.batch_class, "qos_dir": args.qos_dir,
                   "criterion": args.criterion},
        "classes": state["classes"],
        "probe": probe,
        "rows": table,
        "criterion": crit,
        "verdicts": report.verdicts(table, args.ns),
        "evidence": state["evidence"],
        "daemon_evidence": state["daemon_evidence"],
        "checks": state["checks"],
        "check_lines": [c["line"] for c in state["checks"] if c["when"] == "start"],
        "problems": state["problems"],
        "notes": state["notes"],
        "runs": runs,
    }


def write_log(args, say):
    try:
        with open(os.path.join(args.out, "mps_qos.log"), "w") as handle:
            handle.write("\n".join(say.lines) + "\n")
    except OSError:
        pass


def write_outputs(args, state, result, say):
    out = args.out
    try:
        why = report.plot(result, os.path.join(out, "mps_qos.png"))
    except Exception as exc:  # the plot is the least of the outputs
        why = "plotting failed: %s: %s" % (type(exc).__name__, exc)
    if why:
        result["notes"].append("PNG not written: %s" % why)
        say("PNG not written: %s" % why)
    with open(os.path.join(out, "mps_qos.json"), "w") as handle:
        json.dump(result, handle, indent=1, sort_keys=True, default=str)
    with open(os.path.join(out, "mps_qos.md"), "w") as handle:
        handle.write(report.render_markdown(result))
    logs = state.get("logs") or {}
    if any(logs.values()):
        with open(os.path.join(out, "mps_daemon.log"), "w") as handle:
            for name in ("control", "server"):
                handle.write("==> %s.log <==\n%s\n\n" % (name, logs.get(name) or "(empty)"))
    say("wrote %s" % ", ".join(sorted(os.listdir(out))))
    write_log(args, say)


if __name__ == "__main__":
    sys.exit(main())
