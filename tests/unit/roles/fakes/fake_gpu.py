"""A simulated GPU for the cuda_workload tests: the workers of the seeds (the matmul worker of seed 002, the kernel pair
of seed 003) without CUDA, speaking the workers' protocol (READY <pid>, wait for a line, "iteration N: X ms" lines,
RESULT {json} with started_at/ended_at), so that the runner and the lab's table are tested end to end on a CPU.

- A worker connects to the fake MPS daemon the way the CUDA driver does: only when CUDA_MPS_PIPE_DIRECTORY holds a
  live daemon (its control socket and pid file); it then registers its PID where the fake nvidia-cuda-mps-control's
  get_client_list lists it. GPULAB_SIM_NO_MPS=1: a worker that silently runs WITHOUT MPS although its pipe directory
  names a daemon (what a wrong pipe directory looks like).
- The GPU: one lock file per pipe directory. Time-slicing (not an MPS client): every iteration holds it, so workers
  take turns. MPS: a matmul fills the GPU, so it holds it too; a kernel of the pair (a few blocks) does not, so the
  pair runs side by side. Each iteration takes FAKE_GPU_MS (20 ms) of the GPU. Timings are real sleeps: what is
  tested is the harness and the table's shape, never a speed.

Run as a program it is a python3 that has "PyTorch": it answers the role's library probe with "torch", runs
matmul_worker.py and kernel_pair.py as the simulated workers, and hands every other command line to the real Python. The fake nvcc builds
a kernel_pair that calls main("kernel_pair", ...).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time


def connect():
    """Whether this worker is an MPS client of the daemon its pipe directory names (registering it there: where the
    fake nvidia-cuda-mps-control lists clients, or, with FAKE_GPU_STANDIN naming the stand-in daemon's CLI of
    tests/standins, by attaching itself to that daemon as its standin_attach_client says)."""
    pipe = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "")
    if os.environ.get("GPULAB_SIM_NO_MPS") or not (
            os.path.exists(os.path.join(pipe, "control"))
            and os.path.exists(os.path.join(pipe, "nvidia-cuda-mps-control.pid"))):
        return False
    standin = os.environ.get("FAKE_GPU_STANDIN")
    if standin:
        done = subprocess.run([standin], input="standin_attach_client %d\n" % os.getpid(), text=True,
                              capture_output=True, timeout=30, check=False)
        return done.returncode == 0
    os.makedirs(os.path.join(pipe, "sim-clients"), exist_ok=True)
    with open(os.path.join(pipe, "sim-clients", str(os.getpid())), "w") as handle:
        with open("/proc/self/stat") as stat:  # the start time: the fake control's proof that this PID is still us
            handle.write(stat.read().rsplit(")", 1)[1].split()[19])
    return True


def option(argv, name, default):
    return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else default


def main(kind, argv):
    mps = connect()
    iterations = int(option(argv, "--iterations", "3"))
    seconds = float(os.environ.get("FAKE_GPU_MS", "20")) / 1000.0
    gpu = open(os.path.join(os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or "/tmp", "fake-gpu.lock"), "a")
    takes_gpu = not mps or kind == "matmul"
    if "--handshake" in argv:
        print("READY %d" % os.getpid(), flush=True)
        if not sys.stdin.readline():
            return 0
    times = []
    started = time.time()
    for it in range(iterations):
        t0 = time.time()
        if takes_gpu:
            fcntl.flock(gpu, fcntl.LOCK_EX)
        try:
            time.sleep(seconds)
        finally:
            if takes_gpu:
                fcntl.flock(gpu, fcntl.LOCK_UN)
        times.append((time.time() - t0) * 1000.0)
        print("iteration %d: %.3f ms" % (it, times[-1]), flush=True)
    ended = time.time()
    result = {"workload": kind, "pid": os.getpid(), "implementation": "simulated", "ms": [round(t, 4) for t in times],
              "started_at": started, "ended_at": ended, "check": "ok",
              # What this process got, as the benchmark client's inspect says it: a QoS class's variables.
              "mps_env": dict((k, v) for k, v in sorted(os.environ.items()) if k.startswith("CUDA_MPS_"))}
    if kind == "matmul":
        result.update(size=int(option(argv, "--size", "4096")), device="simulated GPU")
    else:
        result.update(kernel=option(argv, "--kernel", "add"), implementation="cuda-c",
                      blocks=int(option(argv, "--blocks", "4")))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def as_python(argv):
    """A python3 with "PyTorch": the role's probe, the matmul worker, and the real Python for everything else."""
    if argv[:1] == ["-c"] and len(argv) > 1 and "find_spec" in argv[1]:
        print("torch")
        return 0
    if argv and argv[0].endswith("matmul_worker.py"):
        return main("matmul", argv[1:])
    if argv and argv[0].endswith("kernel_pair.py"):
        return main("kernel_pair", argv[1:])
    os.execv(sys.executable, [sys.executable] + argv)
    return 127


if __name__ == "__main__":
    sys.exit(as_python(sys.argv[1:]))
