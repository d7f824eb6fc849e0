# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Two Unix users on one GPU under MPS: what their clients get at the same time, without and with the multi-user
server (`nvidia-cuda-mps-control -d -M`).

    python3 benchmarks/mps_multiuser.py --out OUT           (as root, on a GPU host; about a minute)
    python3 benchmarks/mps_multiuser.py --dry-run

For each daemon (`-d`, then `-d -M`), on a pipe directory of its own, with a default active thread percentage of 50:
1. user A's client (a throwaway user this script creates) starts, reports what it got (its uid, the SMs its blocks
   run on) and launches small kernels (16 blocks, about 2 ms alone: a quarter of the SMs at most) for --a-seconds;
2. a second later user B's client starts, with CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25 in its environment;
3. while A runs, the daemon is asked what runs (get_server_list, ps, each server's uid and active thread
   percentage); if B is ready meanwhile, it launches the same kernels while A still does;
4. if B is not ready when A's run ends, A exits, and the time B then takes to be ready is measured.
The verdict per daemon: *concurrent* (B ran while A ran, neither slowed: one GPU shared at once), *time-sliced* (both
ran, each at about half speed), or *serialized* (B's client could not start until A's ended). Each client's launches
are timed from submit to completion, and both are proven MPS clients by the daemon's `ps` (the collection's parser).

The users (gpulabmu1, gpulabmu2 by default; a GECOS comment marks them as this script's) are created with useradd,
run the client through setpriv (runuser where setpriv is missing) and are removed with userdel at the end, with
their processes; a user of that name that this script did not create is refused. Clients read the client script
from a folder readable by all (0755), and keep CuPy's cache in a folder of their own. Every daemon it starts is
stopped. It never changes compute mode, clocks, power, persistence or MIG.

Output in --out: mps_multiuser.json, mps_multiuser.md, mps_multiuser.log. Exit status 0 when both daemons were
measured, 1 when one was not (what was measured is written), 2 when nothing could start.
--as-current-user runs both "users" as the current user (no useradd): for testing this script without root.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pwd
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
import mps_benchmark as bench  # noqa: E402  (the daemon, the clients, the membership proof)
import mps_qos_report as qreport  # noqa: E402

mps_out = bench.mps_out
MARKER = "gpulab.mps throwaway (mps_multiuser.py)"
DAEMONS = {"plain": ["-d"], "multiuser": ["-d", "-M"]}
SLOWER = 1.4  # a client this much slower than alone did not have the GPU at the same time


# --- decisions (pure) -------------------------------------------------------------------------------------------

def split_latencies(latencies, offsets, start_ms, end_ms):
    """A's launches before another client's window and during it: (before, during) latency lists."""
    before, during = [], []
    for latency, offset in zip(latencies, offsets):
        if offset < start_ms:
            before.append(latency)
        elif offset <= end_ms:
            during.append(latency)
    return before, during


def verdict(finding):
    """(word, sentence) for one daemon's finding.

    finding: {"b_failed": message or None, "b_ready_before_a_exit": bool, "a_p50_before_ms", "a_p50_during_ms",
    "b_p50_ms", "alone_ms", "b_wait_after_a_exit_s", "servers_during": [...]}.
    """
    servers = finding.get("servers_during") or []
    where = "%d server%s (%s)" % (len(servers), "" if len(servers) == 1 else "s", ", ".join(
        "pid %s uid %s" % (s.get("pid"), s.get("uid")) for s in servers) or "none")
    if finding.get("b_failed"):
        return "failed", "user B's client failed: %s" % finding["b_failed"]
    if not finding.get("b_ready_before_a_exit"):
        wait = finding.get("b_wait_after_a_exit_s")
        return "serialized", ("user B's client could not start while user A's ran: it was ready %s s after A's "
                              "client exited; while A ran the daemon had %s" % (
                                  "?" if wait is None else "%.1f" % wait, where))
    before, during, b = finding.get("a_p50_before_ms"), finding.get("a_p50_during_ms"), finding.get("b_p50_ms")
    alone = finding.get("alone_ms") or before
    if None in (before, during, b) or not alone:
        return "unclear", "both clients started, but their launches were not measured side by side"
    slowed = max(during / before, b / alone)
    word = "concurrent" if slowed < SLOWER else "time-sliced"
    return word, ("both users' clients ran at the same time on %s: user A's launches took %.2f ms before B and %.2f "
                  "ms beside B, user B's %.2f ms (alone %.2f ms): %s" % (
                      where, before, during, b, alone,
                      "they shared the GPU at once" if word == "concurrent"
                      else "each at about half speed, taking turns"))


# --- users ------------------------------------------------------------------------------------------------------

class Users(object):
    """The throwaway users: created here, removed at the end with their processes (by PID)."""

    def __init__(self, names, say, as_current=False):
        self.names, self.say, self.as_current = list(names), say, as_current
        self.created = []
        self.switch = None

    def create(self):
        if self.as_current:
            return
        if os.geteuid() != 0:
            raise bench.BenchError("creating throwaway users needs root (or --as-current-user to test the script)")
        for tool in ("useradd", "userdel"):
            if not shutil.which(tool):
                raise bench.BenchError("%s is missing: cannot create the throwaway users" % tool)
        self.switch = "setpriv" if shutil.which("setpriv") else ("runuser" if shutil.which("runuser") else None)
        if not self.switch:
            raise bench.BenchError("neither setpriv nor runuser is here: cannot run a client as another user")
        for name in self.names:
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                entry = None
            if entry is not None and entry.pw_gecos != MARKER:
                raise bench.BenchError("user %s exists and is not this script's (GECOS %r): pass other --users"
                                       % (name, entry.pw_gecos))
            if entry is None:
                done = subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                                       "--shell", "/usr/sbin/nologin", "--comment", MARKER, name],
                                      capture_output=True, text=True, timeout=30, check=False)
                if done.returncode != 0:
                    raise bench.BenchError("useradd %s failed: %s" % (name, (done.stdout + done.stderr).strip()))
                self.say("created user %s (uid %d)" % (name, pwd.getpwnam(name).pw_uid))
            self.created.append(name)

    def uid(self, name):
        return os.getuid() if self.as_current else pwd.getpwnam(name).pw_uid

    def argv(self, name, argv):
        if self.as_current:
            return list(argv)
        entry = pwd.getpwnam(name)
        if self.switch == "setpriv":
            return ["setpriv", "--reuid=%d" % entry.pw_uid, "--regid=%d" % entry.pw_gid, "--clear-groups", "--"] + argv
        return ["runuser", "-u", name, "--"] + argv

    def remove(self):
        for name in list(self.created):
            uid = pwd.getpwnam(name).pw_uid
            for pid in processes_of(uid):
                bench._signal(pid, 9)
            time.sleep(0.2)
            done = subprocess.run(["userdel", name], capture_output=True, text=True, timeout=30, check=False)
            try:
                pwd.getpwnam(name)
                gone = False
            except KeyError:
                gone = True
            self.say("removed user %s: %s" % (name, "done" if gone else "userdel said: %s" % (
                done.stdout + done.stderr).strip()))
            if gone:
                self.created.remove(name)


def processes_of(uid):
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat("/proc/%s" % entry).st_uid == uid:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def process_uid(pid):
    try:
        with open("/proc/%d/status" % pid) as handle:
            for line in handle:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (IOError, OSError, ValueError, IndexError):
        return None
    return None


# --- one daemon ---------------------------------------------------------------------------------------------------

def ready_now(client, timeout=0.2):
    """The client's "ready" message if it came within `timeout` s, else None (it is still starting)."""
    try:
        return bench.collect([client], "ready", timeout)[0]
    except bench.BenchError as exc:
        if client.proc.poll() is not None:
            raise
        if "no 'ready' within" in str(exc):
            return None
        raise


def snapshot(daemon, users):
    """What the daemon says runs, asked through the collection's client: servers (with their uid and active thread
    percentage) and each server's client list (get_client_list: the proof of who is an MPS client)."""
    control = daemon.control
    servers, lists = [], {}
    try:
        lists = control.client_lists()
    except bench.MpsControlError:
        pass
    for pid in sorted(lists):
        try:
            threads = control.active_thread_percentage(pid)
        except bench.MpsControlError:
            threads = None
        uid = process_uid(pid)
        user = next((n for n in users.names if not users.as_current and users.uid(n) == uid), None)
        servers.append({"pid": pid, "uid": uid, "user": user or ("root" if uid == 0 else None),
                        "active_thread_percentage": threads})
    return {"servers": servers, "clients": dict((str(s), c) for s, c in sorted(lists.items()))}


def listed(clients, pid):
    """Whether `pid` is in one of the client lists of a snapshot."""
    return any(pid in pids for pids in (clients or {}).values())


def run_daemon(args, say, state, name, users, workdir, iters):
    """One daemon, two users: the finding (see verdict())."""
    pipe, log = os.path.join(workdir, name, "pipe"), os.path.join(workdir, name, "log")
    os.makedirs(os.path.join(workdir, name), mode=0o755)
    os.chmod(os.path.join(workdir, name), 0o755)
    daemon = bench.Daemon(pipe, log, True, say, control_binary=args.control_binary, multiuser=name == "multiuser",
                          dir_mode=0o755, state_dir=os.path.join(workdir, name, "state"))
    state["daemons"].append(daemon)
    finding = {"daemon": name, "start": "%s %s" % (mps_out.CONTROL_BINARY, " ".join(DAEMONS[name])),
               "pipe_directory": daemon.pipe_dir, "commands": []}
    daemon.start()
    finding["commands"].append("CUDA_MPS_PIPE_DIRECTORY=%s CUDA_MPS_LOG_DIRECTORY=%s %s" % (
        daemon.pipe_dir, daemon.log_dir, finding["start"]))
    try:
        held = daemon.control.set_default_active_thread_percentage(args.default_threads)
    except bench.MpsControlError as exc:
        held = "refused: %s" % str(exc).splitlines()[0][:200]
    finding["commands"].append("echo set_default_active_thread_percentage %g | %s  -> %s" % (
        args.default_threads, mps_out.CONTROL_BINARY, held))
    user_a, user_b = users.names
    a_env = bench.client_env(pipe)
    b_env = dict(bench.client_env(pipe), CUDA_MPS_ACTIVE_THREAD_PERCENTAGE="%g" % args.b_threads)
    for env, user in ((a_env, user_a), (b_env, user_b)):
        env["CUPY_CACHE_DIR"] = os.path.join(workdir, "cache-%s" % user)
        env["HOME"] = env["CUPY_CACHE_DIR"]
    client_argv = [args.python, "-u", state["client"], "--backend", state["backend"], "--device", str(args.device),
                   "--workloads", "latency", "--latency-blocks", str(args.blocks), "--latency-iters", str(iters),
                   "--matmul-size", "256", "--copy-mib", "16", "--warmup", "3"]
    if state["backend"] == "sim":
        client_argv += ["--sim-latency-ms", str(args.sim_ms), "--sim-dir", os.path.join(workdir, name, "sim")]
    a_argv, b_argv = users.argv(user_a, client_argv), users.argv(user_b, client_argv)
    finding["commands"].append("A: %s" % " ".join(shlex.quote(x) for x in a_argv))
    finding["commands"].append("B: CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=%s %s" % (args.b_threads, " ".join(
        shlex.quote(x) for x in b_argv)))
    a = bench.Client(a_argv, a_env, os.path.join(workdir, name, "a.err"))
    state["clients"].append(a)
    b = None
    try:
        t0 = time.time()
        bench.collect([a], "ready", args.start_timeout)
        finding["a_ready_s"] = round(time.time() - t0, 2)
        a.send({"cmd": "inspect"})
        finding["a_seen"] = bench.collect([a], "inspect", 60)[0]
        start_at = time.time() + 0.5
        a.send({"cmd": "run", "workload": "latency", "start_at": start_at, "duration": args.a_seconds, "warmup": 1,
                "times": True})
        time.sleep(max(0.0, start_at + 1.0 - time.time()))
        b = bench.Client(b_argv, b_env, os.path.join(workdir, name, "b.err"))
        state["clients"].append(b)
        b_started = time.time()
        b_ready, b_run_start, b_failed = None, None, None
        while time.time() < start_at + args.a_seconds - 2.0 and b_ready is None:
            try:
                b_ready = ready_now(b, 0.5)
            except bench.BenchError as exc:
                b_failed = str(exc).splitlines()[0][:400]
                break
        if b_ready is not None:
            finding["b_ready_s"] = round(time.time() - b_started, 2)
        overlap_snapshot = snapshot(daemon, users)
        if b_ready is not None:
            b.send({"cmd": "inspect"})
            finding["b_seen"] = bench.collect([b], "inspect", 60)[0]
            b_run_start = time.time() + 0.3
            b_seconds = max(0.5, start_at + args.a_seconds - 0.3 - b_run_start)
            b.send({"cmd": "run", "workload": "latency", "start_at": b_run_start, "duration": b_seconds,
                    "warmup": 1, "times": True})
            time.sleep(min(1.0, b_seconds / 2))
            overlap_snapshot = snapshot(daemon, users)
        a_result = bench.collect([a], "result", args.a_seconds + 60)[0]
        finding["servers_during"] = overlap_snapshot["servers"]
        finding["clients_during"] = overlap_snapshot["clients"]
        finding["a_launches"] = a_result["count"]
        finding["b_ready_before_a_exit"] = b_ready is not None
        if b_ready is not None:
            b_result = bench.collect([b], "result", 60)[0]
            offset_start = (b_run_start - start_at) * 1000.0
            offset_end = offset_start + (b_result["offsets_ms"][-1] if b_result["offsets_ms"] else 0.0)
            before, during = split_latencies(a_result["latency_ms"], a_result["offsets_ms"], offset_start, offset_end)
            finding["a_p50_before_ms"] = qreport.median(before) if before else None
            finding["a_p50_during_ms"] = qreport.median(during) if during else None
            finding["b_p50_ms"] = qreport.median(b_result["latency_ms"]) if b_result["latency_ms"] else None
            finding["b_launches"] = b_result["count"]
        elif b_failed is None:
            finding["a_p50_before_ms"] = qreport.median(a_result["latency_ms"]) if a_result["latency_ms"] else None
            # A's run is over: let A go, and see how long B then takes.
            a_gone = time.time()
            bench.stop_clients([a], grace=10.0)
            finding["a_exit_s"] = round(time.time() - a_gone, 2)
            try:
                bench.collect([b], "ready", args.b_wait)
                finding["b_wait_after_a_exit_s"] = round(time.time() - a_gone, 2)
                b.send({"cmd": "inspect"})
                finding["b_seen"] = bench.collect([b], "inspect", 60)[0]
                finding["after_a"] = snapshot(daemon, users)
            except bench.BenchError as exc:
                b_failed = str(exc).splitlines()[0][:400]
        finding["b_failed"] = b_failed
        finding["alone_ms"] = state["alone_ms"]
        # Proof that each ran under MPS: its PID in a server's get_client_list while it ran (B's after A's exit, if it
        # waited); never a ps row, which a client's name can print.
        for who in ("a", "b"):
            seen = finding.get("%s_seen" % who)
            if seen:
                lists = finding["clients_during"] if who == "a" or finding["b_ready_before_a_exit"] else (
                    finding.get("after_a") or {}).get("clients", {})
                finding["%s_mps_client" % who] = listed(lists, seen["pid"])
        finding["verdict"], finding["line"] = verdict(finding)
        say("%s: %s" % (finding["start"], finding["line"]))
    finally:
        bench.stop_clients([c for c in (a, b) if c is not None], grace=5.0)
        for client in (a, b):
            if client in state["clients"]:
                state["clients"].remove(client)
        try:
            daemon.stop()
        except bench.BenchError as exc:
            state["problems"].append(str(exc))
        state["logs"][name] = {"control": daemon.log_tail("control.log", 100000),
                               "server": daemon.log_tail("server.log", 100000)}
        state["daemons"].remove(daemon)
    return finding


# --- main ---------------------------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description="Two Unix users' MPS clients at once, without and with -M.")
    p.add_argument("--out", default="mps_multiuser_out")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--daemons", default="plain,multiuser", help="plain (-d) and/or multiuser (-d -M)")
    p.add_argument("--users", default="gpulabmu1,gpulabmu2", help="the two throwaway users")
    p.add_argument("--as-current-user", action="store_true", help="no useradd: both clients as this user (tests)")
    p.add_argument("--a-seconds", type=float, default=10.0, help="how long user A's client launches")
    p.add_argument("--blocks", type=int, default=16, help="blocks per launch (one per SM)")
    p.add_argument("--launch-ms", type=float, default=2.0, help="a launch alone (calibrated)")
    p.add_argument("--default-threads", type=float, default=50.0, help="the daemon's default active thread percentage")
    p.add_argument("--b-threads", type=float, default=25.0, help="CUDA_MPS_ACTIVE_THREAD_PERCENTAGE of B's client")
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--backend", default="auto", choices=["auto", "cupy", "torch", "sim"])
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--control-binary", help="path of nvidia-cuda-mps-control (default: root's and NVIDIA's directories)")
    p.add_argument("--lib", help="a directory holding ansible_collections/gpulab/mps (default: this script's checkout)")
    p.add_argument("--start-timeout", type=float, default=90.0)
    p.add_argument("--b-wait", type=float, default=30.0, help="seconds B may take to start once A's client is gone")
    p.add_argument("--deadline-s", type=float, default=140.0, help="hard stop: clean up (users, daemons) and report")
    p.add_argument("--sim-ms", type=float, default=2.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.daemons = [d for d in DAEMONS if d in [x.strip() for x in args.daemons.split(",")]]
    args.users = [u.strip() for u in args.users.split(",") if u.strip()]
    if not args.daemons or len(args.users) != 2 or args.users[0] == args.users[1]:
        p.error("--daemons takes plain and/or multiuser; --users two different names")
    if args.a_seconds < 4:
        p.error("--a-seconds must be at least 4 (user B starts a second in, and needs time to start)")
    if os.path.isabs(args.python) is False:
        args.python = shutil.which(args.python) or args.python
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    say = bench.Console()
    say("plan: daemons %s; users %s; A launches %d-block kernels (%.1f ms alone) for %.0f s; B starts 1 s later with "
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=%g; daemon default %g %%" % (
            ", ".join(" ".join(DAEMONS[d]) for d in args.daemons), ", ".join(args.users), args.blocks, args.launch_ms,
            args.a_seconds, args.b_threads, args.default_threads))
    if args.dry_run:
        say("dry run: nothing started")
        return 0
    os.makedirs(args.out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="gpulab-mps-mu-")
    os.chmod(workdir, 0o755)  # the users' clients read the client script here
    state = {"daemons": [], "clients": [], "logs": {}, "findings": [], "problems": [], "alone_ms": None,
             "binary": None, "backend": None, "client": os.path.join(workdir, "mps_bench_client.py")}
    shutil.copy(bench.CLIENT, state["client"])
    os.chmod(state["client"], 0o644)
    users = Users(args.users, say, args.as_current_user)

    def on_signal(signum, _frame):
        raise bench.Interrupted("signal %d" % signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, on_signal)
    signal.alarm(int(args.deadline_s))
    status = 0
    try:
        users.create()
        for user in args.users:
            cache = os.path.join(workdir, "cache-%s" % user)
            os.makedirs(cache, mode=0o700)
            if not args.as_current_user:
                os.chown(cache, users.uid(user), pwd.getpwnam(user).pw_gid)
        # Calibrate alone, MPS off, as the users: the client must run as them anyway.
        no_mps = os.path.join(workdir, "no-mps")
        os.makedirs(no_mps, mode=0o755)
        probe_argv = [
            args.python, "-u", state["client"], "--backend", args.backend, "--device", str(args.device),
            "--workloads", "latency", "--latency-blocks", str(args.blocks), "--matmul-size", "256", "--copy-mib", "16",
            "--probe", "--calibrate", "latency=%s" % args.launch_ms] + (
                ["--sim-latency-ms", str(args.sim_ms), "--sim-dir", os.path.join(workdir, "sim")]
                if args.backend == "sim" else [])
        probe = None
        for user in args.users:  # both: it proves each can run the client, and fills each one's CuPy cache
            env = dict(bench.client_env(no_mps), CUPY_CACHE_DIR=os.path.join(workdir, "cache-%s" % user))
            env["HOME"] = env["CUPY_CACHE_DIR"]
            argv = users.argv(user, probe_argv)
            probe_client = bench.Client(argv, env, os.path.join(workdir, "probe-%s.err" % user))
            try:
                answer = bench.collect([probe_client], "probe", args.start_timeout)[0]
            except bench.BenchError as exc:
                raise bench.BenchError("user %s cannot run the client with %s (are its Python, CuPy or PyTorch "
                                       "readable by other users?): %s" % (user, args.python, exc))
            finally:
                probe_client.close()
            probe = probe or answer
        state["backend"], state["alone_ms"] = probe["backend"], probe["solo_ms"]["latency"]
        state["probe"] = probe
        say("probe as %s: %s, %d SMs, backend %s; %d-block launch %s ms alone" % (
            args.users[0], probe["device"]["name"], probe["device"]["sm_count"], probe["backend"], args.blocks,
            qreport._fmt(state["alone_ms"])))
        for name in args.daemons:
            try:
                state["findings"].append(run_daemon(args, say, state, name, users, workdir,
                                                    probe["kernels"]["latency"]["iters"]))
            except bench.BenchError as exc:
                state["problems"].append("daemon %s: %s" % (" ".join(DAEMONS[name]), str(exc).splitlines()[0][:500]))
                say("FAILED %s: %s" % (name, exc))
                status = 1
    except bench.BenchError as exc:
        state["problems"].append(str(exc).splitlines()[0][:600])
        say("ERROR: %s" % exc)
        status = 2
    except bench.Interrupted as exc:
        state["problems"].append("interrupted (%s): results are partial" % exc)
        say("INTERRUPTED (%s): cleaning up" % exc)
        status = 1
    finally:
        signal.alarm(0)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # the cleanup is bounded; let it finish
        bench.stop_clients(state["clients"], grace=2.0)
        for daemon in list(state["daemons"]):
            try:
                daemon.stop()
            except bench.BenchError as exc:
                state["problems"].append(str(exc))
        try:
            users.remove()
        except Exception as exc:  # never leave the cleanup half done silently
            state["problems"].append("removing the users: %s" % exc)
        if users.created:
            state["problems"].append("users left behind: %s" % ", ".join(users.created))
        shutil.rmtree(workdir, ignore_errors=True)
    result = build_result(args, state)
    write_outputs(args, result, state, say)
    print("\n" + render_summary(result), flush=True)
    return status


def build_result(args, state):
    probe = state.get("probe") or {}
    return {
        "schema": "gpulab.mps/multiuser/1",
        "environment": {"gpu_name": probe.get("device", {}).get("name"), "sm_count": probe.get("device", {}).get(
            "sm_count"), "backend": state.get("backend"), "host": socket.gethostname(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
            "command": " ".join(shlex.quote(a) for a in ["python3", "benchmarks/mps_multiuser.py"] + sys.argv[1:]),
            "mps_client": bench.client_file(), "users": args.users, "as_current_user": args.as_current_user},
        "config": {"a_seconds": args.a_seconds, "blocks": args.blocks, "launch_ms": args.launch_ms,
                   "alone_ms": state.get("alone_ms"), "default_threads": args.default_threads,
                   "b_threads": args.b_threads},
        "findings": state["findings"],
        "problems": state["problems"],
        "logs": state["logs"],
    }


def render_summary(result):
    lines = ["Two users under MPS: %s, %s SMs, backend %s; users %s" % (
        result["environment"]["gpu_name"], result["environment"]["sm_count"], result["environment"]["backend"],
        ", ".join(result["environment"]["users"]))]
    for f in result["findings"]:
        lines.append("%s: %s: %s" % (f["start"], f["verdict"].upper(), f["line"]))
        for who in ("a", "b"):
            seen = f.get("%s_seen" % who)
            if seen:
                lines.append("  user %s's client pid %s uid %s: MPS client %s; CUDA gives %s SMs, its blocks ran on %s "
                             "SMs (env %s)" % (who.upper(), seen["pid"], seen.get("uid"), f.get("%s_mps_client" % who),
                                               seen.get("sm_count_attribute"), seen.get("sms_used"),
                                               " ".join("%s=%s" % kv for kv in sorted(seen["mps_env"].items())
                                                        if kv[0] != "CUDA_MPS_PIPE_DIRECTORY") or "-"))
        for server in f.get("servers_during") or []:
            lines.append("  server while A ran: pid %s, uid %s (%s), active thread percentage %s" % (
                server["pid"], server["uid"], server["user"], server["active_thread_percentage"]))
    for line in result["problems"]:
        lines.append("PROBLEM: " + line)
    return "\n".join(lines)


def render_markdown(result):
    env = result["environment"]
    out = ["# Two Unix users' MPS clients at once: %s" % (env.get("gpu_name") or "GPU"), "",
           "- Date %s; host %s; backend %s; command `%s`" % (env["date"], env["host"], env["backend"], env["command"]),
           "- User A's client launches %d-block kernels (%.2f ms alone) for %.0f s; user B's client starts 1 s later "
           "with CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=%g; the daemon's default active thread percentage is %g." % (
               result["config"]["blocks"], result["config"]["alone_ms"] or 0, result["config"]["a_seconds"],
               result["config"]["b_threads"], result["config"]["default_threads"]), "",
           "| daemon | verdict | what was seen |", "|---|---|---|"]
    for f in result["findings"]:
        out.append("| `%s` | %s | %s |" % (f["start"], f["verdict"], f["line"]))
    for f in result["findings"]:
        out += ["", "## `%s`" % f["start"], "", "Commands:", "", "```"] + f["commands"] + ["```", ""]
        for who in ("a", "b"):
            seen = f.get("%s_seen" % who)
            if seen:
                out.append("- user %s's client: pid %s, uid %s, MPS client: %s; CUDA gives it %s SMs, its blocks ran on "
                           "%s SMs; environment %s" % (
                               who.upper(), seen["pid"], seen.get("uid"), f.get("%s_mps_client" % who),
                               seen.get("sm_count_attribute"), seen.get("sms_used"),
                               ", ".join("%s=%s" % kv for kv in sorted(seen["mps_env"].items())) or "-"))
        for server in f.get("servers_during") or []:
            out.append("- server while A ran: pid %s, uid %s (%s), active thread percentage %s" % (
                server["pid"], server["uid"], server["user"], server["active_thread_percentage"]))
        if f.get("clients_during"):
            out.append("- client lists while A ran (get_client_list): %s" % "; ".join(
                "server %s: %s" % (server, ", ".join(str(p) for p in pids) or "none")
                for server, pids in sorted(f["clients_during"].items())))
    if result["problems"]:
        out += ["", "## Problems", ""] + ["- " + p for p in result["problems"]]
    out.append("")
    return "\n".join(out)


def write_outputs(args, result, state, say):
    with open(os.path.join(args.out, "mps_multiuser.json"), "w") as handle:
        json.dump(result, handle, indent=1, sort_keys=True, default=str)
    with open(os.path.join(args.out, "mps_multiuser.md"), "w") as handle:
        handle.write(render_markdown(result))
    say("wrote %s" % ", ".join(sorted(os.listdir(args.out))))
    with open(os.path.join(args.out, "mps_multiuser.log"), "w") as handle:
        handle.write("\n".join(say.lines) + "\n")
        for name, logs in sorted(state["logs"].items()):
            for kind in ("control", "server"):
                handle.write("\n==> %s: %s.log <==\n%s\n" % (name, kind, logs.get(kind) or "(empty)"))


if __name__ == "__main__":
    sys.exit(main())
