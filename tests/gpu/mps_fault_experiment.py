"""What MPS does when a client faults, when its server dies and when the control daemon dies (issue 14).

Run as root on a GPU host, from a checkout:

    python3 tests/gpu/mps_fault_experiment.py --out DIR [--control-binary PATH]

It starts its OWN control daemon in a private pipe directory (a fresh 0700 directory under /run or /root),
never the lab's, and stops it and every server it started (by the PIDs its own daemon listed) at the end.
Four experiments, each a timeline of what the control CLI answers (ps, get_server_list,
get_server_status, get_client_list), sampled every 0.2 s and written down when the answer changes:

  fault    two healthy CuPy clients loop short kernels; a third writes far out of bounds. What the faulting
           client, the healthy ones, a client started during the fault and one started after all exit see;
           what the CLI and the server log say; whether the server recovers and under which PID.
  sticky   the same, but the faulting client and a healthy one stay alive after their error: whether FAULT
           lasts, whether a new client is refused, and whether terminate_client of that server's clients
           brings it back.
  server   the MPS server is killed (SIGKILL) under a running client: what the client sees, what the CLI
           answers, whether the next client gets a new server.
  control  the control daemon is killed (SIGKILL) with a server running: what the pipe directory holds
           after, what the CLI answers, whether the server goes.

Also NVML's per-process view of the clients (nvmlDeviceGetComputeRunningProcesses), for the metrics.
DIR gets timeline.json, transcript.txt (human readable) and the daemon's control.log and server.log.
It never changes compute mode, clocks, power, persistence or MIG.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

CLI_TIMEOUT = 10

HEALTHY = r"""
import sys, time, cupy as cp
seconds = float(sys.argv[1]); linger = float(sys.argv[2]) if len(sys.argv) > 2 else 0
k = cp.RawKernel(r'''extern "C" __global__ void spin(float* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) { float v = x[i];
  for (int j = 0; j < 2000; j++) v = v * 0.999f + 0.001f; x[i] = v; } }''', "spin")
x = cp.zeros(1 << 20, dtype=cp.float32)
print("ready", flush=True)
end = time.time() + seconds; n = 0; last = 0
try:
    while time.time() < end:
        k(((1 << 20) // 256,), (256,), (x, cp.int32(1 << 20)))
        cp.cuda.runtime.deviceSynchronize(); n += 1
        if time.time() - last > 1:
            print("alive %d" % n, flush=True); last = time.time()
except Exception as exc:
    print("ERROR after %d kernels: %s: %s" % (n, type(exc).__name__, exc), flush=True)
    time.sleep(linger)  # a service that logs the error and keeps its process
    sys.exit(3)
print("done %d" % n, flush=True)
"""

FAULTY = r"""
import sys, time, cupy as cp
linger = float(sys.argv[1]) if len(sys.argv) > 1 else 0
k = cp.RawKernel(r'''extern "C" __global__ void oob(int* p) { p[(size_t)1 << 38] = 1; }''', "oob")
p = cp.zeros(16, dtype=cp.int32)
print("ready", flush=True)
try:
    k((1,), (1,), (p,)); cp.cuda.runtime.deviceSynchronize()
    print("no fault", flush=True)
except Exception as exc:
    print("ERROR: %s: %s" % (type(exc).__name__, exc), flush=True)
    time.sleep(linger)
    sys.exit(3)
"""

SHORT = r"""
import sys, cupy as cp
try:
    x = cp.arange(1024); s = int(x.sum()); cp.cuda.runtime.deviceSynchronize()
    print("ok sum=%d" % s, flush=True)
except Exception as exc:
    print("ERROR: %s: %s" % (type(exc).__name__, exc), flush=True); sys.exit(3)
"""


class Lab:
    def __init__(self, out, binary):
        self.out = out
        self.binary = binary
        self.t0 = time.monotonic()
        self.events = []
        self.lock = threading.Lock()
        base = "/run" if os.path.isdir("/run") and os.access("/run", os.W_OK) else None
        self.root = tempfile.mkdtemp(prefix="gpulab-fault-", dir=base)
        os.chmod(self.root, 0o700)
        self.pipe = os.path.join(self.root, "pipe")
        self.logdir = os.path.join(self.root, "log")
        os.mkdir(self.pipe, 0o700)
        os.mkdir(self.logdir, 0o700)
        self.env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=self.pipe, CUDA_MPS_LOG_DIRECTORY=self.logdir)
        self.servers_seen = set()
        self.control_pid = None
        self.clients = []
        self.stop_sampling = threading.Event()
        self.sampling = None

    def t(self):
        return round(time.monotonic() - self.t0, 2)

    def note(self, kind, **data):
        with self.lock:
            entry = dict(t=self.t(), kind=kind, **data)
            self.events.append(entry)
            print(json.dumps(entry), flush=True)

    def cli(self, command):
        try:
            proc = subprocess.run([self.binary], input=command + "\n", env=self.env, capture_output=True,
                                  text=True, timeout=CLI_TIMEOUT, check=False)
            return proc.returncode, (proc.stdout + proc.stderr).strip()
        except subprocess.TimeoutExpired:
            return None, "TIMEOUT after %d s" % CLI_TIMEOUT

    def start_daemon(self):
        rc = subprocess.run([self.binary, "-d"], env=self.env, timeout=CLI_TIMEOUT, check=False).returncode
        time.sleep(0.5)
        with open(os.path.join(self.pipe, "nvidia-cuda-mps-control.pid")) as handle:
            self.control_pid = int(handle.read().strip())
        self.note("daemon started", rc=rc, pid=self.control_pid, pipe=self.pipe)

    def snapshot(self):
        state = {}
        state["ps"] = self.cli("ps")
        rc, servers = self.cli("get_server_list")
        state["get_server_list"] = (rc, servers)
        for line in servers.splitlines():
            if line.strip().isdigit():
                self.servers_seen.add(int(line))
                state["get_server_status " + line.strip()] = self.cli("get_server_status " + line.strip())
                state["get_client_list " + line.strip()] = self.cli("get_client_list " + line.strip())
        return state

    def sampler(self, stop):
        last = None
        while not stop.is_set():
            state = self.snapshot()
            if state != last:
                self.note("cli", state=state)
                last = state
            stop.wait(0.2)

    def client(self, name, code, *args):
        proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.clients.append(proc)
        self.note("client started", name=name, pid=proc.pid)

        def reader():
            for line in proc.stdout:
                self.note("client output", name=name, pid=proc.pid, line=line.rstrip()[:400])
            self.note("client exited", name=name, pid=proc.pid, rc=proc.wait())
        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        return proc, thread

    def wait_for(self, proc, seconds):
        try:
            return proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return None

    def nvml(self):
        try:
            import pynvml
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            procs = [{"pid": p.pid, "used_mib": (p.usedGpuMemory or 0) // 2**20}
                     for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)]
            pynvml.nvmlShutdown()
            self.note("nvml compute processes", processes=procs)
        except Exception as exc:  # the record says what failed; the experiment goes on
            self.note("nvml failed", error="%s: %s" % (type(exc).__name__, exc))

    def stop_everything(self):
        for proc in self.clients:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        rc, text = self.cli("quit")
        self.note("quit", rc=rc, text=text)
        time.sleep(1)
        for pid in sorted(self.servers_seen | ({self.control_pid} if self.control_pid else set())):
            if os.path.exists("/proc/%d" % pid):
                try:
                    with open("/proc/%d/cmdline" % pid, "rb") as handle:
                        cmd = handle.read().split(b"\0")[0].decode()
                except OSError:
                    continue
                if "nvidia-cuda-mps" in cmd:
                    os.kill(pid, signal.SIGKILL)
                    self.note("killed leftover", pid=pid, cmd=cmd)

    def start_sampled(self):
        """Start the daemon, and the sampler that writes down every change of its CLI answers."""
        self.start_daemon()
        self.sampling = threading.Thread(target=self.sampler, args=(self.stop_sampling,), daemon=True)
        self.sampling.start()

    def finish(self, tag, threads=(), join=5, alive_of=()):
        """The end of an experiment: its clients' readers joined, the sampler stopped, the final state written
        down (with which of `alive_of` still live), every process stopped, the logs kept under `tag`."""
        for thread in threads:
            thread.join(timeout=join)
        self.stop_sampling.set()
        self.sampling.join(timeout=15)
        extra = {"alive": {p.pid: p.poll() is None for p in alive_of}} if alive_of else {}
        self.note("final", state=self.snapshot(), **extra)
        self.stop_everything()
        self.logs(tag)

    def logs(self, tag):
        for name in ("control.log", "server.log"):
            source = os.path.join(self.logdir, name)
            if os.path.exists(source):
                shutil.copy(source, os.path.join(self.out, "%s-%s" % (tag, name)))


def experiment_fault(lab):
    lab.start_sampled()
    a, ta = lab.client("healthy-a", HEALTHY, 25)
    b, tb = lab.client("healthy-b", HEALTHY, 25)
    time.sleep(6)
    lab.nvml()
    bad, tbad = lab.client("faulty", FAULTY)
    lab.wait_for(bad, 30)
    time.sleep(2)
    lab.nvml()
    during, tduring = lab.client("new-during-fault", SHORT)
    lab.wait_for(during, 30)
    for proc in (a, b):
        if lab.wait_for(proc, 30) is None:
            lab.note("healthy client still running 30 s after the fault", pid=proc.pid)
    time.sleep(3)
    after, tafter = lab.client("new-after-all-exited", SHORT)
    lab.wait_for(after, 60)
    time.sleep(1)
    lab.finish("fault", (ta, tb, tbad, tduring, tafter))


def experiment_sticky(lab):
    """The faulting client and a healthy one both stay alive after the error: does FAULT last, are new clients
    refused, and does terminate_client of the FAULT server's clients bring the server back?"""
    lab.start_sampled()
    a, ta = lab.client("healthy-lingers", HEALTHY, 60, 60)
    time.sleep(5)
    bad, tbad = lab.client("faulty-lingers", FAULTY, 60)
    time.sleep(5)
    lab.nvml()
    during, tduring = lab.client("new-during-fault", SHORT)
    rc = lab.wait_for(during, 15)
    lab.note("new client during FAULT", rc=rc, still_waiting=rc is None)
    servers = [int(x) for x in lab.cli("get_server_list")[1].split() if x.isdigit()]
    for server in servers:
        clients = [int(x) for x in lab.cli("get_client_list %d" % server)[1].split() if x.isdigit()]
        for client in clients:
            lab.note("terminate_client", server=server, client=client,
                     answer=lab.cli("terminate_client %d %d" % (server, client)))
    time.sleep(4)
    lab.note("after terminate_client", state=lab.snapshot(),
             alive={p.pid: p.poll() is None for p in (a, bad, during)})
    lab.wait_for(during, 20)
    after, tafter = lab.client("new-after-terminate", SHORT)
    lab.wait_for(after, 30)
    lab.finish("sticky", (ta, tbad, tduring, tafter), join=3, alive_of=(a, bad, during, after))


def experiment_server_killed(lab):
    lab.start_sampled()
    a, ta = lab.client("victim", HEALTHY, 20)
    time.sleep(6)
    servers = [int(x) for x in lab.cli("get_server_list")[1].split() if x.isdigit()]
    lab.note("killing server", servers=servers)
    for pid in servers:
        os.kill(pid, signal.SIGKILL)
    lab.wait_for(a, 30)
    time.sleep(2)
    nxt, tn = lab.client("next-client", SHORT)
    lab.wait_for(nxt, 60)
    for thread in (ta, tn):
        thread.join(timeout=5)
    time.sleep(1)
    lab.finish("server")


def experiment_control_killed(lab):
    lab.start_daemon()
    a, ta = lab.client("client", HEALTHY, 12)
    time.sleep(6)
    state = lab.snapshot()
    lab.note("before", state=state)
    os.kill(lab.control_pid, signal.SIGKILL)
    time.sleep(1)
    lab.note("after control SIGKILL", pipe_listing=sorted(os.listdir(lab.pipe)),
             control_alive=os.path.exists("/proc/%d" % lab.control_pid), cli=lab.cli("get_server_list"),
             servers_alive={pid: os.path.exists("/proc/%d" % pid) for pid in lab.servers_seen})
    lab.wait_for(a, 30)
    ta.join(timeout=5)
    time.sleep(2)
    lab.note("after client end", servers_alive={pid: os.path.exists("/proc/%d" % pid) for pid in lab.servers_seen})
    # The daemon is gone, so nothing answers quit: kill the servers this daemon started (their PIDs are ours).
    lab.control_pid = None
    lab.stop_everything()
    lab.logs("control")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--control-binary", default=shutil.which("nvidia-cuda-mps-control") or
                        "/usr/local/nvidia/bin/nvidia-cuda-mps-control")
    parser.add_argument("--only", choices=("fault", "sticky", "server", "control"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for name, run in (("fault", experiment_fault), ("sticky", experiment_sticky), ("server", experiment_server_killed),
                      ("control", experiment_control_killed)):
        if args.only and args.only != name:
            continue
        lab = Lab(args.out, args.control_binary)
        try:
            run(lab)
        except Exception as exc:
            lab.note("experiment failed", error="%s: %s" % (type(exc).__name__, exc))
            lab.stop_everything()
        finally:
            results[name] = lab.events
            shutil.rmtree(lab.root, ignore_errors=True)
    with open(os.path.join(args.out, "timeline.json"), "w") as handle:
        json.dump(results, handle, indent=1)
    with open(os.path.join(args.out, "transcript.txt"), "w") as handle:
        for name, events in results.items():
            handle.write("##### %s\n" % name)
            for event in events:
                handle.write(json.dumps(event) + "\n")
    left = subprocess.run(["pgrep", "-a", "-f", "nvidia-cuda-mps"], capture_output=True, text=True, timeout=10,
                          check=False).stdout
    print("MPS processes left:", left.strip() or "none")


if __name__ == "__main__":
    main()
